"""The dynamic-k matcher on small hand-computed cases, including the reference's stale-mask loop."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffdet.losses import LossConfig
from diffdet.losses import matcher as matcher_module
from diffdet.losses.matcher import DynamicKMatcher, dynamic_k_matching, in_boxes_info


def test_centre_prior_is_strict_and_scales_with_gt_size():
    gt = torch.tensor([[10.0, 10.0, 20.0, 30.0]])  # centre (15, 20), size 10 × 20
    # centres: inside; on the left edge (not strictly inside); inside the window (|dx| < 25); outside it
    pred = torch.tensor(
        [
            [14.0, 19.0, 16.0, 21.0],
            [9.0, 19.0, 11.0, 21.0],
            [38.0, 19.0, 40.0, 21.0],
            [39.0, 69.0, 41.0, 71.0],
        ]
    )
    fg, in_both = in_boxes_info(pred, gt)
    assert fg.tolist() == [True, True, True, False]
    assert in_both[:, 0].tolist() == [True, False, False, False]


def test_dynamic_k_is_the_floored_top_iou_sum_at_least_one():
    cost = torch.tensor([[1.0, 9.0], [2.0, 8.0], [3.0, 7.0], [4.0, 1.0]])
    ious = torch.tensor(
        [[0.9, 0.0], [0.8, 0.1], [0.5, 0.2], [0.1, 0.3]]
    )  # k = int(2.3) = 2 and max(1, 0) = 1
    selected, gt_index = dynamic_k_matching(cost.clone(), ious, ota_k=5)
    assert selected.tolist() == [True, True, False, True]
    assert gt_index.tolist() == [0, 0, 1]


def test_query_claimed_by_two_gts_keeps_its_cheapest():
    cost = torch.tensor([[1.0, 2.0], [5.0, 0.5], [6.0, 6.0]])
    ious = torch.tensor([[0.6, 0.6], [0.5, 0.5], [0.0, 0.0]])  # k = 1 for both
    # GT0 takes q0 and GT1 takes q1: no conflict.
    selected, gt_index = dynamic_k_matching(cost.clone(), ious, ota_k=2)
    assert selected.tolist() == [True, True, False] and gt_index.tolist() == [0, 1]
    # Both GTs want q0; q0's row minimum is GT0; GT1 then takes the cheapest free query q2 in the loop.
    cost = torch.tensor([[1.0, 0.5], [9.0, 9.0], [6.0, 2.0]])
    cost[0, 0] = 0.4
    selected, gt_index = dynamic_k_matching(cost.clone(), ious, ota_k=2)
    assert selected.tolist() == [True, False, True] and gt_index.tolist() == [0, 1]


def test_loop_resolves_conflicts_with_the_stale_mask_like_the_reference():
    """Three GTs all want q0. q0 keeps GT0; in the loop GT1 and GT2 both take q1, and the reference
    re-resolves only the rows conflicted *before* the loop, so q1 keeps two GTs and reports the first."""
    cost = torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0], [9.0, 9.5, 9.8]])
    ious = torch.zeros(3, 3)
    selected, gt_index = dynamic_k_matching(cost.clone(), ious, ota_k=5)
    assert selected.tolist() == [True, True, False]
    assert gt_index.tolist() == [0, 1]  # GT2 ends up unmatched in the loss, as in the reference


def test_cost_matrix_matches_the_reference_formula():
    matcher = DynamicKMatcher.from_config(LossConfig())
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 70.0]])
    target = {
        "labels": torch.tensor([1]),
        "boxes_xyxy": torch.tensor([[5.0, 0.0, 15.0, 10.0]]),
        "image_size_xyxy": torch.tensor([100.0, 100.0, 100.0, 100.0]),
    }
    cost = matcher.cost_matrix(logits, pred, target)
    p = torch.sigmoid(torch.tensor([2.0, 0.5]))
    cls = 0.25 * (1 - p) ** 2 * -torch.log(p + 1e-8) - 0.75 * p**2 * -torch.log(1 - p + 1e-8)
    l1 = torch.tensor([(5 + 0 + 5 + 0) / 100, (45 + 50 + 45 + 60) / 100])
    # Query 0: IoU 50/150 and the enclosing box 15 × 10 equals the union → GIoU 1/3; its centre (5, 5)
    # is on the GT's left edge (not strictly inside) but within the 2.5·size window → fg, +100.
    # Query 1: disjoint, enclosing 60 × 70 → GIoU = −(4200 − 300)/4200; centre (55, 60) is 45 > 25 px
    # from the GT centre in x → outside the window, not fg: +100 + 10000.
    giou = torch.tensor([1 / 3, -(4200 - 300) / 4200])
    expected = 5 * l1 + 2 * cls - 2 * giou + torch.tensor([100.0, 10100.0])
    torch.testing.assert_close(cost[:, 0], expected, rtol=5e-6, atol=1e-5)  # float32 rounding at 1e4


def test_matcher_handles_images_without_gt_and_checks_the_batch():
    matcher = DynamicKMatcher.from_config(LossConfig())
    outputs = {"pred_logits": torch.zeros(1, 4, 3), "pred_boxes": torch.tensor([[[0.0, 0, 5, 5]] * 4])}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes_xyxy": torch.zeros(0, 4)}
    empty["image_size_xyxy"] = torch.tensor([10.0] * 4)
    ((selected, gt_index),) = matcher(outputs, [empty])
    assert not selected.any() and gt_index.numel() == 0
    with pytest.raises(ValueError, match="targets"):
        matcher(outputs, [empty, empty])
    with pytest.raises(ValueError, match="cost_class"):
        DynamicKMatcher(0, 0, 0, 0.25, 2.0, 5)


def test_repair_loop_that_never_settles_is_cut_with_a_warning(monkeypatch):
    """14 GT boxes for 8 queries: the reference's loop never settles on some cost matrices (it hangs);
    ours stops after MAX_REPAIR_ROUNDS with a warning and a valid matching."""
    monkeypatch.setattr(matcher_module, "MAX_REPAIR_ROUNDS", 300)
    settled = cut = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        cost, ious = torch.rand(8, 14, generator=g), torch.rand(8, 14, generator=g) * 0.3
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            selected, gt_index = dynamic_k_matching(cost, ious, 5)
        assert gt_index.numel() == int(selected.sum()) <= 8
        assert gt_index.min() >= 0 and gt_index.max() < 14
        if caught:
            assert "gave up after 300 rounds" in str(caught[0].message)
            cut += 1
        else:
            settled += 1
    assert cut > 0 and settled > 0
