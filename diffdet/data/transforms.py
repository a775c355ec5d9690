"""Training and test transforms of the reference (REFERENCE.md §6), on PIL images and xyxy boxes.

Each transform takes ``(image, boxes, rng)`` and returns ``(image, boxes)``: ``image`` a PIL RGB
image, ``boxes`` a float64 numpy array [n, 4] in xyxy pixels of that image, ``rng`` a
``numpy.random.Generator`` (per-sample, so data order and augmentation replay exactly on resume).
Geometry follows detectron2: the resize rounds with ``int(x + 0.5)`` and uses PIL bilinear; boxes
are clipped to the final image and those with width or height ≤ 1e-5 are removed at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from diffdet.errors import BadImageError

EMPTY_BOX_THRESHOLD = 1e-5  # detectron2 Boxes.nonempty


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) of detectron2's ``ResizeShortestEdge`` for one short-edge size.

    Args:
        h (int): input height in pixels.
        w (int): input width in pixels.
        short_edge (int): target length of the shorter side.
        max_size (int): upper bound on the longer side after resizing.

    Returns:
        tuple[int, int]: ``(new_h, new_w)``, each rounded with ``int(x + 0.5)``.
    """
    scale = short_edge / min(h, w)
    new_h, new_w = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def check_resizable(height: int, width: int, short_edge: int, max_size: int, where: str) -> None:
    """Refuse an image that the resize would shrink to nothing (a 20000x20 image under a 1333-pixel cap).

    Args:
        height (int): image height in pixels.
        width (int): image width in pixels.
        short_edge (int): the smallest short-edge size the resize may pick (the resized short side
            grows with it).
        max_size (int): the long-side cap.
        where (str): the image and its record, for the message.

    Raises:
        BadImageError: a side of the resized image would be 0 pixels (or the image has none).
    """
    if height < 1 or width < 1 or min(resized_shape(height, width, short_edge, max_size)) < 1:
        raise BadImageError(
            f"image {where} is {height}x{width} (HxW): too elongated for the model's resize (short side "
            f"{short_edge}, long side at most {max_size}), a side would become 0 pixels"
        )


@dataclass
class RandomFlip:
    """Horizontal flip with probability ``prob`` (x1' = W − x2, x2' = W − x1)."""

    prob: float = 0.5

    def __call__(self, image: Image.Image, boxes: np.ndarray, rng: np.random.Generator):
        if rng.random() >= self.prob:
            return image, boxes
        width = image.width
        flipped = boxes.copy()
        flipped[:, 0] = width - boxes[:, 2]
        flipped[:, 2] = width - boxes[:, 0]
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped


@dataclass
class ResizeShortestEdge:
    """Resize so the short side is drawn from ``short_edges`` ("choice") and the long side ≤ max_size."""

    short_edges: Sequence[int]
    max_size: int = sys.maxsize

    def __post_init__(self) -> None:
        if len(self.short_edges) == 0 or min(self.short_edges) < 1:
            raise ValueError(f"short_edges must be non-empty positive sizes, got {list(self.short_edges)}")

    def __call__(self, image: Image.Image, boxes: np.ndarray, rng: np.random.Generator):
        size = int(self.short_edges[rng.integers(len(self.short_edges))])
        new_h, new_w = resized_shape(image.height, image.width, size, self.max_size)
        if (new_h, new_w) == (image.height, image.width):
            return image, boxes
        scale = np.array([new_w / image.width, new_h / image.height] * 2)
        return image.resize((new_w, new_h), Image.Resampling.BILINEAR), boxes * scale


@dataclass
class RandomCrop:
    """detectron2 ``RandomCrop("absolute_range", (lo, hi))``: crop h ∈ [lo, min(H, hi)], w likewise.

    Sizes and offsets are uniform over integers. An image side shorter than ``lo`` is kept whole.
    Boxes are shifted into the crop and clipped to it.
    """

    min_size: int
    max_size: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"crop size range must be 1 <= lo <= hi, got ({self.min_size}, {self.max_size})")

    def __call__(self, image: Image.Image, boxes: np.ndarray, rng: np.random.Generator):
        h, w = image.height, image.width
        crop_h = int(rng.integers(min(self.min_size, h), min(h, self.max_size) + 1))
        crop_w = int(rng.integers(min(self.min_size, w), min(w, self.max_size) + 1))
        y0 = int(rng.integers(h - crop_h + 1))
        x0 = int(rng.integers(w - crop_w + 1))
        shifted = boxes - np.array([x0, y0, x0, y0], dtype=boxes.dtype)
        return image.crop((x0, y0, x0 + crop_w, y0 + crop_h)), clip_boxes(shifted, crop_h, crop_w)


def clip_boxes(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Clip xyxy pixel boxes [n, 4] to an image of height ``h`` and width ``w``."""
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def nonempty(boxes: np.ndarray) -> np.ndarray:
    """bool [n]: boxes whose width and height both exceed 1e-5 pixels."""
    return ((boxes[:, 2] - boxes[:, 0]) > EMPTY_BOX_THRESHOLD) & (
        (boxes[:, 3] - boxes[:, 1]) > EMPTY_BOX_THRESHOLD
    )


class TrainTransform:
    """The reference's training augmentation (``DiffusionDetDatasetMapper``).

    Without crop: flip → resize(min_sizes, max_size). With ``crop``, each image takes with
    probability 0.5 the crop branch instead: flip → resize(crop_resize, no max) → random crop
    (crop_size) → resize(min_sizes, max_size). Boxes end clipped and empty ones dropped.

    Args:
        min_sizes (Sequence[int]): short-edge choices of the final resize (reference 480..800 step 32).
        max_size (int): bound on the long side after the final resize (reference 1333).
        flip_prob (float): probability of the horizontal flip (0 disables it).
        crop (bool): enable the crop branch.
        crop_resize (Sequence[int]): short-edge choices before cropping (reference 400, 500, 600).
        crop_size (tuple[int, int]): absolute crop-size range (reference 384, 600).
    """

    def __init__(
        self,
        min_sizes: Sequence[int],
        max_size: int,
        flip_prob: float = 0.5,
        crop: bool = False,
        crop_resize: Sequence[int] = (400, 500, 600),
        crop_size: tuple[int, int] = (384, 600),
    ) -> None:
        self.flip = RandomFlip(flip_prob)
        self.resize = ResizeShortestEdge(tuple(min_sizes), max_size)
        self.crop = crop
        self.crop_steps = [ResizeShortestEdge(tuple(crop_resize)), RandomCrop(*crop_size)] if crop else []

    def __call__(
        self, image: Image.Image, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        """Augment one image.

        Args:
            image (PIL.Image.Image): RGB image.
            boxes (np.ndarray[n, 4]): xyxy pixels of ``image``.
            labels (np.ndarray[n]): contiguous class ids, filtered together with the boxes.
            rng (np.random.Generator): source of every random choice.

        Returns:
            ``(image, boxes, labels)``: the augmented image, its clipped non-empty boxes (float64,
            xyxy pixels of the new image) and their labels.
        """
        # The branch draw comes first, as in the reference (np.random.rand() > 0.5 → no crop).
        use_crop = self.crop and rng.random() <= 0.5
        steps = [self.flip, *(self.crop_steps if use_crop else []), self.resize]
        for step in steps:
            image, boxes = step(image, boxes, rng)
        boxes = clip_boxes(boxes, image.height, image.width)
        keep = nonempty(boxes)
        return image, boxes[keep], labels[keep]
