"""Federated loss of the published LVIS models (REFERENCE.md §10; detectron2's ``get_fed_loss_classes``).

Each call of the classification loss (once per head stage) keeps a set of classes and masks the
sigmoid focal loss to them, for every query alike:

    U    = sorted distinct target classes of all B·P queries of the local batch, "no object" (K) included
    prob = class weights w[0..K−1] with prob[U] = 0, and prob[K] = 0
    kept = U ++ multinomial(prob, n − |U|, replacement=False)      if |U| < n, else U
    mask = 1 at kept classes (K falls off the end)                 [K]

with n = ``fed_loss_num_classes`` (50). Because K counts in |U|, only n − 1 real classes are kept
whenever some query is unmatched (always, in practice): that is the published rule. The
``"corrected"`` rule counts real classes only, so n real classes are kept. The draw uses the global
RNG of the logits' device (as published) unless a generator is given.

The weights are the per-class training-image counts raised to a power (0.5): see
:func:`class_image_counts` and :func:`fed_loss_weights`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from diffdet.losses.config import FED_LOSS_RULES


def fed_loss_classes(
    target_classes: Tensor,
    num_fed_loss_classes: int,
    num_classes: int,
    weight: Tensor,
    rule: str = "published",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The classes the federated loss keeps for one stage of one batch.

    Args:
        target_classes (Tensor[N]): int64 target class of every query of the local batch: its GT's
            contiguous label when matched, ``num_classes`` ("no object") otherwise.
        num_fed_loss_classes (int): n, the number of classes to keep (50).
        num_classes (int): K, foreground classes.
        weight (Tensor[K]): non-negative sampling weight of every class (image_count ** 0.5).
        rule (str): ``"published"`` (K counts in |U|: n − 1 real classes) or ``"corrected"``
            (n real classes).
        generator (torch.Generator | None): RNG of the draw; None uses the global RNG of the
            device of ``target_classes`` (the published behaviour).

    Returns:
        Tensor[M]: int64 kept class ids, the distinct targets first (sorted), then the draws in draw
        order. May contain K (published rule); never more draws than classes of non-zero weight.
    """
    if rule not in FED_LOSS_RULES:
        raise ValueError(f"rule must be one of {FED_LOSS_RULES}, got {rule!r}")
    if weight.shape != (num_classes,):
        raise ValueError(f"weight must be [{num_classes}], got {tuple(weight.shape)}")
    unique = torch.unique(target_classes)  # sorted
    if rule == "corrected":
        unique = unique[unique < num_classes]
    prob = unique.new_ones(num_classes + 1).float()
    prob[-1] = 0
    if len(unique) >= num_fed_loss_classes:
        return unique
    prob[:num_classes] = weight.float().clone()
    prob[unique] = 0
    # The published code would crash (multinomial) with fewer non-zero classes than draws (K < 50);
    # draw them all instead. For LVIS this never binds, so the RNG stream is the published one.
    draws = min(num_fed_loss_classes - len(unique), int(torch.count_nonzero(prob)))
    if draws == 0:
        return unique
    sampled = torch.multinomial(prob, draws, replacement=False, generator=generator)
    return torch.cat([unique, sampled])


def fed_loss_mask(kept: Tensor, num_classes: int) -> Tensor:
    """float32 [K] mask with 1 at the kept classes; a kept "no object" id K is dropped."""
    mask = kept.new_zeros(num_classes + 1, dtype=torch.float32)
    mask[kept] = 1
    return mask[:num_classes]


def class_image_counts(
    categories: list[Mapping], image_categories: Iterable[Iterable[int]] | None = None
) -> Tensor:
    """Training images per class, in contiguous-label (sorted category id) order.

    As detectron2 (REFERENCE.md §10), LVIS's own ``image_count`` field of the categories is used
    when every category has one; otherwise the count is taken from the annotations: the images
    with at least one annotation of the class.

    Args:
        categories (list[Mapping]): the annotation file's categories (``id``, optional ``image_count``).
        image_categories (Iterable[Iterable[int]] | None): per training image, the category ids of
            its annotations; needed only when some category has no ``image_count``.

    Returns:
        Tensor[K]: float32 counts.

    Raises:
        ValueError: a category lacks ``image_count`` and no ``image_categories`` were given.
    """
    ordered = sorted(categories, key=lambda c: c["id"])
    if all("image_count" in c for c in ordered):
        return torch.tensor([float(c["image_count"]) for c in ordered], dtype=torch.float32)
    if image_categories is None:
        raise ValueError("image_categories must be given when a category has no 'image_count'")
    index = {c["id"]: i for i, c in enumerate(ordered)}
    counts = torch.zeros(len(ordered), dtype=torch.float32)
    for ids in image_categories:
        for cat in set(ids):
            counts[index[cat]] += 1
    return counts


def fed_loss_weights(counts: Tensor, power: float) -> Tensor:
    """float32 [K] sampling weights ``counts ** power`` (detectron2's ``get_fed_loss_cls_weights``)."""
    return counts.float() ** power
