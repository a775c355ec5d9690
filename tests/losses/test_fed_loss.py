"""Federated loss against a transcription of the published rule (REFERENCE.md §10).

``published_*`` below transcribe DiffusionDet's ``SetCriterionDynamicK.get_fed_loss_classes`` and the
federated branch of its ``loss_labels`` (focal loss as fvcore's ``sigmoid_focal_loss``), line by line.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffdet.losses import LossConfig, build_criterion
from diffdet.losses.fed_loss import class_image_counts, fed_loss_classes, fed_loss_mask, fed_loss_weights
from diffdet.metadata.lvis import lvis_v1_categories

K = 1203


def published_get_fed_loss_classes(gt_classes, num_fed_loss_classes, num_classes, weight):
    unique_gt_classes = torch.unique(gt_classes)
    prob = unique_gt_classes.new_ones(num_classes + 1).float()
    prob[-1] = 0
    if len(unique_gt_classes) < num_fed_loss_classes:
        prob[:num_classes] = weight.float().clone()
        prob[unique_gt_classes] = 0
        sampled_negative_classes = torch.multinomial(
            prob, num_fed_loss_classes - len(unique_gt_classes), replacement=False
        )
        fed_loss_classes = torch.cat([unique_gt_classes, sampled_negative_classes])
    else:
        fed_loss_classes = unique_gt_classes
    return fed_loss_classes


def published_focal(inputs, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def published_loss_labels(src_logits, targets, indices, num_classes, fed_weight):
    batch_size = len(targets)
    target_classes = torch.full(src_logits.shape[:2], num_classes, dtype=torch.int64)
    target_classes_o_list = []
    for batch_idx in range(batch_size):
        valid_query = indices[batch_idx][0]
        gt_multi_idx = indices[batch_idx][1]
        if len(gt_multi_idx) == 0:
            continue
        target_classes_o = targets[batch_idx]["labels"]
        target_classes[batch_idx, valid_query] = target_classes_o[gt_multi_idx]
        target_classes_o_list.append(target_classes_o[gt_multi_idx])
    num_boxes = torch.cat(target_classes_o_list).shape[0] if len(target_classes_o_list) != 0 else 1
    target_classes_onehot = torch.zeros([src_logits.shape[0], src_logits.shape[1], num_classes + 1])
    target_classes_onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
    gt_classes = torch.argmax(target_classes_onehot, dim=-1)
    target_classes_onehot = target_classes_onehot[:, :, :-1]
    src_logits = src_logits.flatten(0, 1)
    target_classes_onehot = target_classes_onehot.flatten(0, 1)
    cls_loss = published_focal(src_logits, target_classes_onehot)
    N = src_logits.shape[0]
    fed_classes = published_get_fed_loss_classes(gt_classes, 50, num_classes, fed_weight)
    fed_loss_classes_mask = fed_classes.new_zeros(num_classes + 1)
    fed_loss_classes_mask[fed_classes] = 1
    fed_loss_classes_mask = fed_loss_classes_mask[:num_classes]
    weight = fed_loss_classes_mask.view(1, num_classes).expand(N, num_classes).float()
    return torch.sum(cls_loss * weight) / num_boxes


def lvis_weights() -> torch.Tensor:
    return torch.tensor([c.image_count for c in lvis_v1_categories()], dtype=torch.float32) ** 0.5


def _targets_with_unmatched(classes: list[int], num_queries: int) -> torch.Tensor:
    target = torch.full((num_queries,), K, dtype=torch.int64)
    target[: len(classes)] = torch.tensor(classes)
    return target


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_class_choice_equals_the_published_rule_for_a_seed(seed):
    target = _targets_with_unmatched([5, 900, 5, 17, 1202], 40)
    torch.manual_seed(seed)
    ours = fed_loss_classes(target, 50, K, lvis_weights())
    torch.manual_seed(seed)
    published = published_get_fed_loss_classes(target, 50, K, lvis_weights())
    assert torch.equal(ours, published)
    # The quirk: K counts in |U|, so 4 GT classes + "no object" leave 45 draws -> 49 real classes.
    assert ours[:5].tolist() == [5, 17, 900, 1202, K]
    assert len(ours) == 50 and len(set(ours.tolist())) == 50
    mask = fed_loss_mask(ours, K)
    assert mask.sum() == 49 and mask[[5, 17, 900, 1202]].eq(1).all()


def test_an_explicit_generator_gives_the_same_draw_as_the_seeded_global_rng():
    target = _targets_with_unmatched([3, 4], 10)
    torch.manual_seed(11)
    from_global = fed_loss_classes(target, 50, K, lvis_weights())
    from_generator = fed_loss_classes(
        target, 50, K, lvis_weights(), generator=torch.Generator().manual_seed(11)
    )
    assert torch.equal(from_global, from_generator)


def test_corrected_rule_keeps_fifty_real_classes():
    target = _targets_with_unmatched([5, 900, 17, 1202], 40)
    kept = fed_loss_classes(target, 50, K, lvis_weights(), rule="corrected")
    assert len(kept) == 50 and K not in kept.tolist()
    assert kept[:4].tolist() == [5, 17, 900, 1202]
    assert fed_loss_mask(kept, K).sum() == 50


def test_no_draw_when_the_batch_already_has_enough_classes():
    target = torch.arange(60).repeat(2)
    state = torch.get_rng_state()
    assert torch.equal(fed_loss_classes(target, 50, K, lvis_weights()), torch.arange(60))
    assert torch.equal(state, torch.get_rng_state())  # the RNG was not touched


def test_zero_weight_classes_are_never_drawn_and_few_classes_do_not_crash():
    weight = torch.tensor([1.0, 0.0, 2.0, 0.0])
    kept = fed_loss_classes(torch.tensor([3, 4, 4]), 50, 4, weight)  # the published code would crash
    assert sorted(kept.tolist()) == [0, 2, 3, 4]
    assert fed_loss_mask(kept, 4).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rule"):
        fed_loss_classes(torch.tensor([0]), 50, 3, torch.ones(3), rule="other")
    with pytest.raises(ValueError, match="weight"):
        fed_loss_classes(torch.tensor([0]), 50, 3, torch.ones(4))
    with pytest.raises(ValueError, match="fed_loss_rule"):
        LossConfig(fed_loss_rule="fixed")


def _stage(generator: torch.Generator, batch: int, queries: int) -> dict:
    xy = torch.rand(batch, queries, 2, generator=generator) * 60
    wh = torch.rand(batch, queries, 2, generator=generator) * 40 + 5
    return {
        "pred_logits": torch.randn(batch, queries, K, generator=generator) - 3,
        "pred_boxes": torch.cat([xy, xy + wh], -1),
    }


def test_criterion_loss_equals_the_published_loss_stage_by_stage():
    g = torch.Generator().manual_seed(0)
    criterion = build_criterion(K, LossConfig(use_fed_loss=True, normalization="local"))
    weights = torch.rand(K, generator=g) * 40 + 1
    criterion.set_fed_loss_weights(weights)
    stages = [_stage(g, 2, 12) for _ in range(3)]
    outputs = {**stages[-1], "aux_outputs": stages[:-1]}
    whwh = torch.tensor([100.0, 100.0, 100.0, 100.0])
    boxes = [[[10.0, 10, 50, 50], [30, 20, 70, 90]], [[0.0, 0, 40, 30], [50, 50, 90, 80], [5, 5, 25, 25]]]
    labels = [[7, 300], [7, 1100, 2]]
    targets = [
        {"labels": torch.tensor(lab), "boxes_xyxy": torch.tensor(box), "image_size_xyxy": whwh}
        for lab, box in zip(labels, boxes, strict=True)
    ]
    torch.manual_seed(123)
    losses = criterion(outputs, targets)
    # The published order of draws: the last stage, then the auxiliary stages in order.
    torch.manual_seed(123)
    for name, stage in [("loss_ce", outputs), *((f"loss_ce_{i}", s) for i, s in enumerate(stages[:-1]))]:
        indices = criterion.matcher(stage, targets)
        expected = 2.0 * published_loss_labels(stage["pred_logits"], targets, indices, K, weights)
        torch.testing.assert_close(losses[name], expected, msg=name)
    # Without federated loss the focal term is larger (every class counts).
    plain = build_criterion(K, LossConfig(normalization="local"))(outputs, targets)
    assert plain["loss_ce"] > 2 * losses["loss_ce"]


def test_class_image_counts_from_the_image_count_field_or_the_annotations():
    categories = [{"id": 3, "image_count": 4}, {"id": 1, "image_count": 9}]
    assert class_image_counts(categories).tolist() == [9.0, 4.0]
    no_field = [{"id": 3}, {"id": 1}, {"id": 2}]
    images = [[1, 1, 3], [3], [], [1]]  # class 1 in two images (twice in the first), 3 in two, 2 in none
    assert class_image_counts(no_field, images).tolist() == [2.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="image_categories"):
        class_image_counts(no_field)
    assert fed_loss_weights(torch.tensor([4.0, 9.0]), 0.5).tolist() == [2.0, 3.0]
