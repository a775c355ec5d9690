"""The set criterion against the formulas: focal, L1, GIoU, weights, stages, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from diffdet.losses import LossConfig, build_criterion
from diffdet.losses.criterion import sigmoid_focal_loss

WHWH = torch.tensor([100.0, 100.0, 100.0, 100.0])


def _focal(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma


def test_sigmoid_focal_loss_matches_the_formula():
    logits = torch.tensor([0.0, 2.0, -3.0, 1.5])
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0])
    expected = torch.tensor([_focal(x, t) for x, t in zip(logits.tolist(), targets.tolist(), strict=True)])
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 0.25, 2.0), expected)
    # alpha < 0 disables the class weighting
    no_alpha = sigmoid_focal_loss(logits, targets, -1.0, 2.0)
    torch.testing.assert_close(no_alpha[0], torch.tensor(math.log(2) * 0.25))


def _one_query_case():
    """One image, one GT of class 1, one query: the matcher has no choice."""
    logits = torch.tensor([[[0.5, -1.0, 0.2]]])
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    target = {
        "labels": torch.tensor([1]),
        "boxes_xyxy": torch.tensor([[5.0, 0.0, 15.0, 10.0]]),
        "image_size_xyxy": WHWH,
    }
    return {"pred_logits": logits, "pred_boxes": boxes}, [target]


def test_single_match_gives_the_hand_computed_losses():
    outputs, targets = _one_query_case()
    losses = build_criterion(3, LossConfig(deep_supervision=False))(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    ce = _focal(0.5, 0) + _focal(-1.0, 1) + _focal(0.2, 0)
    torch.testing.assert_close(losses["loss_ce"], torch.tensor(2.0 * ce))
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(5.0 * (5 + 0 + 5 + 0) / 100))
    torch.testing.assert_close(losses["loss_giou"], torch.tensor(2.0 * (1 - 1 / 3)))


def test_deep_supervision_adds_each_earlier_stage_with_its_own_matching():
    outputs, targets = _one_query_case()
    shifted = {"pred_logits": outputs["pred_logits"] * 0, "pred_boxes": outputs["pred_boxes"] + 5.0}
    outputs["aux_outputs"] = [shifted, dict(outputs)]
    losses = build_criterion(3, LossConfig())(outputs, targets)
    assert list(losses) == [
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "loss_ce_0",
        "loss_bbox_0",
        "loss_giou_0",
        "loss_ce_1",
        "loss_bbox_1",
        "loss_giou_1",
    ]
    torch.testing.assert_close(losses["loss_ce_1"], losses["loss_ce"])
    torch.testing.assert_close(
        losses["loss_bbox_0"], torch.tensor(5.0 * (0 + 5 + 0 + 5) / 100)
    )  # [5,5,15,15]
    torch.testing.assert_close(losses["loss_ce_0"], torch.tensor(2.0 * (2 * _focal(0, 0) + _focal(0, 1))))


def test_losses_divide_by_the_matched_count_and_empty_images_add_only_negatives():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 3)
    xy = torch.rand(2, 6, 2) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(2, 6, 2) * 30], dim=-1)
    gt = {"labels": torch.tensor([0, 2]), "boxes_xyxy": torch.tensor([[10.0, 10, 40, 40], [50, 20, 90, 70]])}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes_xyxy": torch.zeros(0, 4)}
    targets = [{**gt, "image_size_xyxy": WHWH}, {**empty, "image_size_xyxy": WHWH}]
    criterion = build_criterion(3, LossConfig(deep_supervision=False))
    outputs = {"pred_logits": logits, "pred_boxes": boxes}
    losses = criterion(outputs, targets)
    matches = criterion.matcher(outputs, targets)
    selected, gt_index = matches[0]
    n = len(gt_index)
    onehot = torch.zeros(2, 6, 3)
    onehot[0, selected, gt["labels"][gt_index]] = 1
    expected_ce = sigmoid_focal_loss(logits, onehot, 0.25, 2.0).sum() / n
    torch.testing.assert_close(losses["loss_ce"], 2.0 * expected_ce)
    l1 = (boxes[0, selected] / 100 - gt["boxes_xyxy"][gt_index] / 100).abs().sum() / n
    torch.testing.assert_close(losses["loss_bbox"], 5.0 * l1)


def test_no_gt_anywhere_gives_zero_box_losses_that_keep_the_graph():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]], requires_grad=True)
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    empty = {
        "labels": torch.zeros(0, dtype=torch.int64),
        "boxes_xyxy": torch.zeros(0, 4),
        "image_size_xyxy": WHWH,
    }
    losses = build_criterion(2, LossConfig(deep_supervision=False))(
        {"pred_logits": logits, "pred_boxes": boxes}, [empty]
    )
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    torch.testing.assert_close(
        losses["loss_ce"], torch.tensor(2.0 * 2 * _focal(0, 0))
    )  # divided by max(0, 1)
    sum(losses.values()).backward()
    assert boxes.grad is not None and torch.equal(boxes.grad, torch.zeros_like(boxes))


def test_local_and_global_normalisation_agree_in_one_process():
    outputs, targets = _one_query_case()
    local = build_criterion(3, LossConfig(normalization="local"))(outputs, targets)
    global_ = build_criterion(3, LossConfig(normalization="global"))(outputs, targets)
    for key in local:
        torch.testing.assert_close(local[key], global_[key])


def test_config_and_inputs_are_checked():
    with pytest.raises(ValueError, match="normalization"):
        LossConfig(normalization="batch")
    with pytest.raises(ValueError, match="fed_loss_num_classes"):
        LossConfig(fed_loss_num_classes=0)
    outputs, targets = _one_query_case()
    with pytest.raises(ValueError, match="pred_logits must have 4 classes"):
        build_criterion(4, LossConfig())(outputs, targets)


def test_fed_loss_weights_buffer_is_lvis_image_counts_to_the_power():
    """The LVIS criterion carries ``fed_loss_cls_weights`` [1203] = image_count ** 0.5 (REFERENCE.md §10:
    counts 1..1977, so weights 1..44.46), persistent so that the published LVIS checkpoints load."""
    criterion = build_criterion(1203, LossConfig(use_fed_loss=True))
    weights = criterion.state_dict()["fed_loss_cls_weights"]
    assert weights.shape == (1203,) and weights.dtype == torch.float32
    assert weights.min().item() == 1.0
    assert abs(weights.max().item() - 1977**0.5) < 1e-4
    assert "fed_loss_cls_weights" not in build_criterion(1203, LossConfig()).state_dict()
