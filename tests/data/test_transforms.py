"""Transforms keep image and boxes consistent: flip, resize, crop with clipping and empty-box filtering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffdet.data.transforms import (
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    TrainTransform,
    resized_shape,
)


class ScriptedRng:
    """A stand-in generator: ``random()`` returns ``r``; ``integers`` returns the scripted values in order."""

    def __init__(self, r: float = 0.0, ints: tuple[int, ...] = ()) -> None:
        self.r, self.ints = r, list(ints)

    def random(self) -> float:
        return self.r

    def integers(self, *args, **kwargs) -> int:
        return self.ints.pop(0)


def test_flip_mirrors_boxes_and_pixels():
    image = Image.new("RGB", (10, 6))
    image.putpixel((1, 2), (255, 255, 255))
    out, boxes = RandomFlip(1.0)(image, np.array([[1.0, 2.0, 4.0, 5.0]]), ScriptedRng())
    assert boxes.tolist() == [[6.0, 2.0, 9.0, 5.0]]
    assert out.getpixel((8, 2)) == (255, 255, 255)
    same, kept = RandomFlip(0.5)(image, np.array([[1.0, 2.0, 4.0, 5.0]]), ScriptedRng(r=0.7))
    assert same is image and kept.tolist() == [[1.0, 2.0, 4.0, 5.0]]


@pytest.mark.parametrize(
    ("hw", "short", "max_size", "expected"),
    [
        ((480, 640), 800, 1333, (800, 1067)),  # 640 · 800/480 = 1066.67 → int(x + 0.5)
        ((640, 480), 800, 1333, (1067, 800)),
        ((100, 1000), 800, 1333, (133, 1333)),  # the long side caps the scale
        ((427, 640), 480, 1333, (480, 719)),  # 640 · 480/427 = 719.44
    ],
)
def test_resize_shape_matches_detectron2(hw, short, max_size, expected):
    assert resized_shape(*hw, short, max_size) == expected


def test_resize_scales_boxes_with_the_image():
    image = Image.new("RGB", (64, 32))
    out, boxes = ResizeShortestEdge((48,), 1000)(
        image, np.array([[8.0, 4.0, 16.0, 12.0]]), ScriptedRng(ints=(0,))
    )
    assert out.size == (96, 48)
    np.testing.assert_allclose(boxes, [[12.0, 6.0, 24.0, 18.0]])


def test_crop_shifts_clips_and_keeps_size_in_range():
    image = Image.new("RGB", (100, 80))
    boxes = np.array([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0], [90.0, 70.0, 100.0, 80.0]])
    crop = RandomCrop(40, 60)
    rng = ScriptedRng(ints=(60, 60, 8, 8))  # crop h, crop w, y0, x0
    out, cropped = crop(image, boxes, rng)
    assert out.size == (60, 60)
    np.testing.assert_allclose(cropped, [[2, 2, 22, 22], [0, 0, 0, 0], [60, 60, 60, 60]])


def test_crop_of_an_image_smaller_than_the_range_keeps_it_whole():
    out, _ = RandomCrop(384, 600)(Image.new("RGB", (50, 40)), np.zeros((0, 4)), np.random.default_rng(0))
    assert out.size == (50, 40)


COLOURS = np.array([(250, 40, 40), (40, 250, 40), (40, 40, 250), (250, 250, 40)])


def _rectangle_scene(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A black image with one coloured rectangle per quadrant (no overlaps), some touching the border."""
    h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    boxes = []
    for k, (qy, qx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        y_lo, y_hi, x_lo, x_hi = qy * (h // 2), (qy + 1) * (h // 2), qx * (w // 2), (qx + 1) * (w // 2)
        x0, y0 = int(rng.integers(x_lo, x_hi - 10)), int(rng.integers(y_lo, y_hi - 10))
        x1, y1 = int(rng.integers(x0 + 8, x_hi + 1)), int(rng.integers(y0 + 8, y_hi + 1))
        canvas[y0:y1, x0:x1] = COLOURS[k]
        boxes.append([x0, y0, x1, y1])
    return Image.fromarray(canvas), np.array(boxes, dtype=np.float64)


@pytest.mark.parametrize("seed", range(8))
def test_train_transform_keeps_boxes_on_their_pixels(seed):
    """After flip/resize/crop each kept box lies inside the image and is filled by its own rectangle."""
    rng = np.random.default_rng(seed)
    image, boxes = _rectangle_scene(rng)
    transform = TrainTransform(
        (40, 56, 72), 200, flip_prob=0.5, crop=True, crop_resize=(60, 80), crop_size=(30, 50)
    )
    out, new_boxes, labels = transform(image, boxes, np.arange(len(boxes)), rng)
    pixels = np.asarray(out).astype(int)
    assert (new_boxes[:, 0::2] >= 0).all() and (new_boxes[:, 2] <= out.width).all()
    assert (new_boxes[:, 1::2] >= 0).all() and (new_boxes[:, 3] <= out.height).all()
    assert ((new_boxes[:, 2:] - new_boxes[:, :2]) > 1e-5).all()
    for box, label in zip(new_boxes, labels, strict=True):
        x0, y0, x1, y1 = np.round(box).astype(int)
        inner = pixels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3)  # PIL's filter blurs the rim
        if len(inner):
            assert (np.abs(inner - COLOURS[label]).max(axis=1) <= 10).mean() > 0.9
        # the box is tight: one pixel outside it on each side is no longer this colour (or off-image)
        for y, x in (
            (y0 - 2, (x0 + x1) // 2),
            (y1 + 1, (x0 + x1) // 2),
            ((y0 + y1) // 2, x0 - 2),
            ((y0 + y1) // 2, x1 + 1),
        ):
            if 0 <= y < out.height and 0 <= x < out.width:
                assert np.abs(pixels[y, x] - COLOURS[label]).max() > 40


def test_boxes_outside_the_crop_are_removed_with_their_labels():
    image = Image.new("RGB", (100, 100))
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [80.0, 80.0, 95.0, 95.0]])
    transform = TrainTransform((50,), 1000, flip_prob=0.0, crop=True, crop_resize=(100,), crop_size=(50, 50))

    # crop branch (r <= 0.5), no flip, resize choice 0, crop 50×50 at (0, 0), final resize choice 0
    out, kept, labels = transform(
        image, boxes, np.array([3, 4]), ScriptedRng(r=0.0, ints=(0, 50, 50, 0, 0, 0))
    )
    assert out.size == (50, 50)
    assert labels.tolist() == [3] and kept.tolist() == [[0.0, 0.0, 10.0, 10.0]]
