"""Test-time augmentation: the merges against the published code, the box geometry, the scale filter,
and the wrapper against the merge of its per-input detections."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import published_tta as published
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffdet.modeling.tta import (
    PRESETS,
    PUBLISHED_SIZES,
    AugmentedInput,
    DiffusionDetWithTTA,
    TTAConfig,
    augmented_inputs,
    map_boxes_back,
    scale_filter,
)
from diffdet.modeling.tta_merge import nms_merge, soft_vote_merge


def _hand_made() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes with known groups: a 3-box class-0 group, a class-1 twin of its best box (kept apart only
    by the class offset), a member whose decayed score falls under the 0.05 floor, and loners."""
    boxes = torch.tensor(
        [
            [10.0, 10.0, 50.0, 50.0],  # best of the class-0 group
            [12.0, 10.0, 52.0, 50.0],  # IoU 0.905 with it
            [10.0, 14.0, 50.0, 54.0],  # IoU 0.818
            [10.0, 10.0, 50.0, 50.0],  # class 1: same box, another class
            [60.0, 60.0, 80.0, 80.0],  # loner
            [61.0, 60.0, 81.0, 80.0],  # IoU 0.905 with the next one's group best, score 0.5 -> 0.047 < 0.05
            [60.0, 60.0, 80.0, 80.0],  # class 2 best of a pair
            [0.0, 0.0, 5.0, 5.0],  # far loner
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.6, 0.85, 0.3, 0.5, 0.7, 0.2])
    labels = torch.tensor([0, 0, 0, 1, 3, 2, 2, 0])
    return boxes, scores, labels


def _assert_same(got: dict, boxes, scores, labels, atol=1e-4) -> None:
    torch.testing.assert_close(got["scores"], scores.float(), atol=1e-6, rtol=0)
    assert torch.equal(got["labels"], labels.long())
    torch.testing.assert_close(got["boxes"], boxes.float(), atol=atol, rtol=0)


def test_soft_vote_matches_the_published_merge_on_hand_made_boxes():
    boxes, scores, labels = _hand_made()
    got = soft_vote_merge(boxes, scores, labels, (100, 100))
    _assert_same(got, *published.merge_result(boxes.clone(), scores, labels, (100, 100)))
    # By hand: the class-0 group's mean box, its copies at score x (1 - IoU), the class-1 twin untouched.
    w = scores[:3]
    mean = (boxes[:3] * w[:, None]).sum(0) / w.sum()
    assert torch.allclose(got["boxes"][0], mean, atol=1e-4) and got["scores"][0] == pytest.approx(0.9)
    assert got["labels"][1] == 1 and torch.equal(got["boxes"][1], boxes[3])
    # Class 0: the mean box, the far loner, and the copies (IoU 1440/1760 and 1520/1680).
    expect = [0.9, 0.2, 0.6 * (1 - 1440 / 1760), 0.8 * (1 - 1520 / 1680)]
    assert got["scores"][got["labels"] == 0].tolist() == pytest.approx(expect, rel=1e-5)
    # Class 2: 0.5 x (1 - 0.905) < 0.05, so the pair yields only the mean box; the best box's copy (IoU 1)
    # always drops out.
    assert (got["labels"] == 2).sum() == 1


def test_soft_vote_matches_the_published_merge_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 20 + torch.rand(300, 2, generator=g) * 60], dim=1)
    boxes = boxes[torch.randint(0, 300, (300,), generator=g)] + torch.randn(300, 4, generator=g)  # clusters
    scores = torch.rand(300, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    for cap in (500, 40):
        got = soft_vote_merge(boxes, scores, labels, (240, 250), max_detections=cap)
        _assert_same(
            got, *published.merge_result(boxes.clone(), scores, labels, (240, 250), max_detection=cap)
        )


def test_soft_vote_of_nothing_is_empty():
    got = soft_vote_merge(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), (10, 10))
    assert got["boxes"].shape == (0, 4) and got["scores"].shape == (0,) and got["labels"].dtype == torch.int64


def test_nms_merge_matches_detectron2():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(400, 2, generator=g) * 120 - 10
    boxes = torch.cat([xy, xy + 5 + torch.rand(400, 2, generator=g) * 40], dim=1)
    scores = torch.rand(400, generator=g)
    scores[:5] = 0.0  # under the 1e-8 floor
    labels = torch.randint(0, 4, (400,), generator=g)
    got = nms_merge(boxes, scores, labels, (100, 110))
    expect = published.nms_merge(boxes, scores, labels, (100, 110), num_classes=4)
    assert len(got["boxes"]) == 100
    _assert_same(got, *expect, atol=0)


def test_scale_filter_bounds_are_strict():
    # Areas 64 (= 8²), 64.5, 9999, 10000 (= 100²).
    boxes = torch.tensor([[0, 0, 8, 8], [0, 0, 8, 8.0625], [0, 0, 99.99, 100], [0, 0, 100, 100.0]])
    assert scale_filter(boxes, 8, 100).tolist() == [False, True, True, False]
    assert torch.equal(scale_filter(boxes, 8, 100), published.filter_boxes(boxes, 8, 100))


def test_augmented_inputs_follow_the_published_order_and_sizes():
    # REFERENCE.md §11, run: a 60x90 image gives 400x600 ... 1800x2700, then 800x1200 (loader 800x1200).
    augs = augmented_inputs((60, 90), 0, TTAConfig(), (800, 1333))
    assert len(augs) == 26
    assert [(a.size_index, a.flipped) for a in augs[:4]] == [(0, False), (0, True), (1, False), (1, True)]
    assert augs[0].shape == (400, 600) and augs[22].shape == (1800, 2700) and augs[24].shape == (800, 1200)
    assert all(a.loader_shape == (800, 1200) for a in augs)
    assert len(augmented_inputs((60, 90), 0, TTAConfig(flip=False), (800, 1333))) == 13


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize(
    ("original", "loader", "shape"),
    [((480, 640), (800, 1067), (600, 800)), ((800, 1200), (800, 1200), (1200, 1800))],
)
def test_map_boxes_back_is_detectron2s_inverse_chain(flipped, original, loader, shape):
    boxes = torch.tensor([[10.5, 20.25, 300.0, 410.75], [0.0, 0.0, 1.0, 2.0], [100.1, 5.3, 599.9, 598.7]])
    aug = AugmentedInput(0, 0, flipped, shape, loader, original)
    got = map_boxes_back(boxes, aug)
    expect = boxes.numpy().copy()
    if flipped:
        expect = published.hflip_box(expect, shape[1])
    expect = published.resize_box(expect, *shape, *loader)
    if loader != original:
        expect = published.resize_box(expect, *loader, *original)
    assert np.array_equal(got.numpy(), expect.astype(np.float32))
    # The forward map (resize, then flip) of the mapped-back boxes returns the boxes.
    fx, fy = shape[1] / original[1], shape[0] / original[0]
    forward = got * torch.tensor([fx, fy, fx, fy])
    if flipped:
        forward = torch.stack(
            [shape[1] - forward[:, 2], forward[:, 1], shape[1] - forward[:, 0], forward[:, 3]], 1
        )
    torch.testing.assert_close(forward, boxes, atol=1e-3, rtol=0)


def test_config_refuses_bad_sizes_and_scales():
    with pytest.raises(ValueError, match="at least one"):
        TTAConfig(sizes=())
    with pytest.raises(ValueError, match="positive"):
        TTAConfig(sizes=(800, 0))
    with pytest.raises(ValueError, match=r"one \(min, max\) per size"):
        TTAConfig(sizes=(800,), scale_ranges=((0, 1), (0, 2)))
    scaled = PRESETS["published"].scaled(0.14)
    assert scaled.sizes[-1] == 112 and scaled.max_size == 560
    assert scaled.ranges()[0] == pytest.approx((96 * 0.14, 10000 * 0.14))
    assert TTAConfig(sizes=(800, 333)).ranges() == ((0, 10000), (0, float("inf")))
    assert PRESETS["published"].sizes == PUBLISHED_SIZES


class SquareFinder(nn.Module):
    """A small detector: the bounding box of the bright pixels (class 0, score set by the input's width)
    and a fixed box in the input's top-left quarter (class 1); boxes in input pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(min_size_test=64, max_size_test=96, num_proposals=50)
        self.device = torch.device("cpu")
        self.calls: list[int] = []

    def forward(self, images, resize=True, **knobs):
        assert resize is False
        self.calls.append(len(images))
        out = []
        for im in images:
            ys, xs = torch.nonzero(im[0] > 127, as_tuple=True)
            h, w = im.shape[1:]
            bright = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            quarter = torch.tensor([0.0, 0.0, w / 4, h / 4])
            score = 0.5 + w / 1000
            out.append(
                {
                    "boxes": torch.stack([bright, quarter]),
                    "scores": torch.tensor([score, 0.3]),
                    "labels": torch.tensor([0, 1]),
                }
            )
        return out


def _square_image() -> torch.Tensor:
    image = torch.zeros(3, 48, 64, dtype=torch.uint8)
    image[:, 10:30, 20:44] = 255
    return image


def test_tta_output_is_the_merge_of_its_per_input_detections():
    config = TTAConfig(sizes=(32, 48, 96), max_size=200, scale_ranges=((0, 100), (0, 20), (0, 1000)))
    detector = SquareFinder()
    tta = DiffusionDetWithTTA(detector, config)
    got = tta([_square_image()])[0]
    assert detector.calls == [2, 2, 2], "an input and its flip run as one batch"
    pool = []
    for size, (lo, hi) in zip(config.sizes, config.ranges(), strict=True):
        for flip in (False, True):
            # The loader resize (48x64 -> 64x85), then ResizeShortestEdge(size, 200) of it (no side
            # reaches 200 here; sides round as int(x + 0.5)), then the flip.
            loader = (64, 85)
            shape = (size, int(85 * size / 64 + 0.5))
            image = F.interpolate(_square_image()[None], size=shape, mode="bilinear", antialias=True)[0]
            image = image.flip(-1) if flip else image
            det = detector([image], resize=False)[0]
            area = (det["boxes"][:, 2] - det["boxes"][:, 0]) * (det["boxes"][:, 3] - det["boxes"][:, 1])
            keep = (area > lo * lo) & (area < hi * hi)
            boxes = det["boxes"][keep].numpy().copy()
            if flip:
                boxes = published.hflip_box(boxes, shape[1])
            boxes = published.resize_box(published.resize_box(boxes, *shape, *loader), *loader, 48, 64)
            pool.append((torch.from_numpy(boxes).float(), det["scores"][keep], det["labels"][keep]))
    boxes, scores, labels = (torch.cat(f) for f in zip(*pool, strict=True))
    _assert_same(got, *published.merge_result(boxes, scores, labels, (48, 64), max_detection=50))
    # The square's merged box is where the square is in the original image.
    torch.testing.assert_close(
        got["boxes"][got["labels"] == 0][0], torch.tensor([20.0, 10.0, 44.0, 30.0]), atol=1.5, rtol=0
    )


def test_batched_inputs_detect_what_each_input_detects_alone(one_thread, still_detector):
    """With a seed every augmented input draws its own noise, so batching an input with its flip
    changes nothing (a tiny random DiffusionDet whose boxes stay where the sampler puts them)."""
    from diffdet.modeling import ModelConfig

    cfg = ModelConfig(
        backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
        num_proposals=10, min_size_test=48, max_size_test=64, num_classes=2, class_names=("a", "b"),
        category_ids=(1, 2),
    )  # fmt: skip
    model = still_detector(cfg)
    images = [
        torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        for i in range(2)
    ]
    config = TTAConfig(sizes=(32, 48), max_size=96)
    batched = DiffusionDetWithTTA(model, config, batch_size=4).pooled_detections(images, steps=1, seed=3)
    alone = DiffusionDetWithTTA(model, config, batch_size=1).pooled_detections(images, steps=1, seed=3)
    for a, b in zip(batched, alone, strict=True):
        assert len(a[0]) > 0
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
