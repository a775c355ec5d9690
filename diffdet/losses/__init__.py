"""diffdet.losses: the dynamic-k matcher and the set criterion (focal, L1, GIoU) of DiffusionDet.

The matcher and criterion live in :mod:`diffdet.losses.matcher` and :mod:`diffdet.losses.criterion`.
This module only imports the config eagerly: the criterion needs :mod:`diffdet.modeling.box_ops`,
and ``diffdet.modeling`` imports :func:`build_criterion` from here, so an eager import would be
circular whichever package is imported first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffdet.losses.config import LossConfig

if TYPE_CHECKING:
    from diffdet.losses.criterion import SetCriterion

__all__ = ["LossConfig", "build_criterion"]


def build_criterion(num_classes: int, cfg: LossConfig) -> SetCriterion:
    """The reference's criterion: a :class:`SetCriterion` with a matcher weighted like the losses.

    Args:
        num_classes (int): number of foreground classes K.
        cfg (LossConfig): loss weights and matcher settings.

    Returns:
        SetCriterion: ``criterion(outputs, targets) -> dict`` of weighted losses.
    """
    from diffdet.losses.criterion import SetCriterion
    from diffdet.losses.matcher import DynamicKMatcher

    return SetCriterion(num_classes, DynamicKMatcher.from_config(cfg), cfg)
