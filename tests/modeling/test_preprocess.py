"""Image batching: detectron2's resize rule, PIL-like resampling, normalisation, padding, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffdet.modeling.preprocess import postprocess_boxes, preprocess_images, resized_shape

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


@pytest.mark.parametrize(
    ("hw", "expect"),
    [
        ((480, 640), (800, 1067)),
        ((1200, 1600), (800, 1067)),
        ((640, 480), (1067, 800)),
        ((100, 1000), (133, 1333)),
    ],
)
def test_resized_shape_follows_resize_shortest_edge(hw, expect):
    assert resized_shape(*hw, 800, 1333) == expect


def test_uint8_resize_is_within_one_level_of_pil_bilinear():
    image = torch.randint(
        0, 256, (3, 120, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    batch = preprocess_images(
        [image], pixel_mean=torch.zeros(3, 1, 1), pixel_std=torch.ones(3, 1, 1), size_divisibility=32,
        resize_to=(200, 1333), dtype=torch.float32,
    )  # fmt: skip
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((267, 200), Image.BILINEAR)
    expect = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    got = batch.tensor[0, :, :200, :267]
    assert float((got - expect).abs().max()) <= 1.0
    assert float((got - expect).abs().mean()) < 0.05


def test_normalise_then_zero_pad_to_the_divisibility():
    images = [torch.full((3, 10, 20), 255, dtype=torch.uint8), torch.ones(3, 40, 5)]
    batch = preprocess_images(
        images, pixel_mean=MEAN, pixel_std=STD, size_divisibility=32, resize_to=None, dtype=torch.float32
    )
    assert batch.tensor.shape == (2, 3, 64, 32)
    assert batch.image_sizes == [(10, 20), (40, 5)] == batch.original_sizes
    assert batch.image_whwh.tolist() == [[20.0, 10.0, 20.0, 10.0], [5.0, 40.0, 5.0, 40.0]]
    # float images in [0, 1] are scaled to 0-255 before the normalisation, as uint8 ones are.
    torch.testing.assert_close(batch.tensor[0, :, 0, 0], ((255 - MEAN) / STD).flatten())
    torch.testing.assert_close(batch.tensor[1, :, 0, 0], ((255 - MEAN) / STD).flatten())
    assert (
        torch.count_nonzero(batch.tensor[0, :, 10:, :]) == 0
        and torch.count_nonzero(batch.tensor[1, :, :, 5:]) == 0
    )


def test_float_images_outside_unit_range_are_rejected():
    with pytest.raises(ValueError, match=r"images\[1\].*\[0, 1\]"):
        preprocess_images(
            [torch.zeros(3, 4, 4), torch.full((3, 4, 4), 3.0)], pixel_mean=MEAN, pixel_std=STD,
            size_divisibility=32, resize_to=None, dtype=torch.float32,
        )  # fmt: skip


def test_postprocess_scales_clips_and_flags_empty_boxes():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 30.0], [-5.0, 2.0, 300.0, 8.0], [90.0, 10.0, 95.0, 20.0]])
    out, keep = postprocess_boxes(boxes, resized=(40, 80), original=(20, 40))
    assert out.tolist() == [[5.0, 5.0, 25.0, 15.0], [0.0, 1.0, 40.0, 4.0], [40.0, 5.0, 40.0, 10.0]]
    assert keep.tolist() == [True, True, False]
