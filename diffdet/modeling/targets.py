"""Training inputs of the detector: validated GT targets and the noisy boxes the head starts from.

Per image (REFERENCE.md §4, ``prepare_targets``): GT boxes in pixels of the network input (scaled with
the image when the detector resizes it), the criterion's target dict, and
:func:`~diffdet.modeling.diffusion.prepare_diffusion_concat`'s noisy boxes mapped to pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffdet.modeling.box_ops import box_xyxy_to_cxcywh
from diffdet.modeling.diffusion import prepare_diffusion_concat
from diffdet.modeling.preprocess import ImageBatch


def check_target(i: int, target: object, num_classes: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Validate ``targets[i]``; return its (boxes [n, 4] float32, labels [n] int64) on ``device``.

    Raises:
        ValueError: not a dict with ``boxes`` (floating [n, 4]) and ``labels`` (int64 [n] in [0, K)).
    """
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
    boxes, labels = target["boxes"], target["labels"]
    if (
        not isinstance(boxes, Tensor)
        or boxes.dim() != 2
        or boxes.shape[1] != 4
        or not boxes.is_floating_point()
    ):
        raise ValueError(f"targets[{i}]['boxes'] must be a floating [n, 4] tensor")
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (boxes.shape[0],):
        raise ValueError(f"targets[{i}]['labels'] must be an int64 [{boxes.shape[0]}] tensor")
    if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < num_classes):
        raise ValueError(f"targets[{i}]['labels'] must be in [0, {num_classes})")
    return boxes.to(device=device, dtype=torch.float32), labels.to(device)


def prepare_targets(
    targets: Sequence[dict[str, Tensor]],
    batch: ImageBatch,
    *,
    num_classes: int,
    num_proposals: int,
    scale: float,
    timesteps: int,
    sqrt_alphas_cumprod: Tensor,
    sqrt_one_minus: Tensor,
) -> tuple[list[dict[str, Tensor]], Tensor, Tensor]:
    """The criterion's targets and the head's noisy input boxes for a training batch.

    Args:
        targets: per image ``boxes`` [n, 4] xyxy pixels of the image as given, ``labels`` [n] int64.
        batch: the preprocessed images (sizes before and after resizing).
        num_classes: K.
        num_proposals: P.
        scale: signal scale.
        timesteps: T.
        sqrt_alphas_cumprod (Tensor[T]): float64 schedule buffer.
        sqrt_one_minus (Tensor[T]): float64 schedule buffer.

    Returns:
        (targets, boxes, t): per image ``labels``, ``boxes_xyxy`` (network-input pixels) and
        ``image_size_xyxy`` (w, h, w, h) for :mod:`diffdet.losses`; boxes Tensor[B, P, 4] float64 xyxy
        network-input pixels; t Tensor[B] int64.

    Raises:
        ValueError: the number of targets differs from the number of images, or a target is malformed.
    """
    if len(targets) != len(batch.image_sizes):
        raise ValueError(
            f"targets must have one dict per image ({len(batch.image_sizes)}), got {len(targets)}"
        )
    device = batch.tensor.device
    prepared, boxes, ts = [], [], []
    for i, (target, (h, w), (oh, ow)) in enumerate(
        zip(targets, batch.image_sizes, batch.original_sizes, strict=True)
    ):
        gt_xyxy, labels = check_target(i, target, num_classes, device)
        gt_xyxy = gt_xyxy * torch.tensor([w / ow, h / oh, w / ow, h / oh], device=device)
        whwh = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        d_boxes, _, d_t = prepare_diffusion_concat(
            box_xyxy_to_cxcywh(gt_xyxy / whwh),
            num_proposals=num_proposals,
            scale=scale,
            timesteps=timesteps,
            sqrt_alphas_cumprod=sqrt_alphas_cumprod,
            sqrt_one_minus=sqrt_one_minus,
        )
        boxes.append(d_boxes)
        ts.append(d_t)
        prepared.append({"labels": labels, "boxes_xyxy": gt_xyxy, "image_size_xyxy": whwh})
    return prepared, torch.stack(boxes) * batch.image_whwh[:, None, :], torch.cat(ts)
