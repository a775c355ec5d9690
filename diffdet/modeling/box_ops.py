"""Box conversions, the head's box transform and pairwise IoU / GIoU.

Frames: ``xyxy`` is (x1, y1, x2, y2) and ``cxcywh`` is (centre x, centre y, width, height), either in
input-image pixels or normalised by the image size (the caller says which). The conversions are those
of DETR's ``util/box_ops.py`` used by the reference, written op for op so results match bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

BBOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
"""Weights (wx, wy, ww, wh) dividing the head's deltas (Sparse R-CNN / REFERENCE.md §2.7)."""

SCALE_CLAMP = math.log(100000.0 / 16)
"""Upper clamp of the log-scale deltas dw, dh before ``exp`` (detectron2's ``_DEFAULT_SCALE_CLAMP``)."""


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert (cx, cy, w, h) boxes to (x1, y1, x2, y2).

    Args:
        boxes (Tensor[..., 4]): cxcywh boxes, any frame, any floating dtype.

    Returns:
        Tensor[..., 4]: the same boxes as xyxy in the same frame and dtype.
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert (x1, y1, x2, y2) boxes to (cx, cy, w, h).

    Args:
        boxes (Tensor[..., 4]): xyxy boxes, any frame, any floating dtype.

    Returns:
        Tensor[..., 4]: the same boxes as cxcywh in the same frame and dtype.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def apply_deltas(
    deltas: Tensor,
    boxes: Tensor,
    weights: Sequence[float] = BBOX_WEIGHTS,
    scale_clamp: float = SCALE_CLAMP,
) -> Tensor:
    """Apply the head's regression deltas (dx, dy, dw, dh) to boxes (detectron2 Box2BoxTransform).

    ``ctr' = ctr + (d_xy / w_xy) * size`` and ``size' = exp(min(d_wh / w_wh, scale_clamp)) * size``,
    computed in float32 (float64 when ``deltas`` is float64): the reference casts the boxes to the
    deltas' dtype, and diffdet keeps box arithmetic in fp32 when the head runs in fp16/bf16.

    Args:
        deltas (Tensor[N, 4]): regression output of the head, any floating dtype.
        boxes (Tensor[N, 4]): xyxy boxes in input-image pixels, any floating dtype.
        weights: (wx, wy, ww, wh) dividing the deltas; (2, 2, 1, 1) in the reference.
        scale_clamp: upper clamp of dw and dh, log(100000 / 16) in the reference.

    Returns:
        Tensor[N, 4]: xyxy boxes in input-image pixels, float32 (float64 for float64 deltas).
        Differentiable w.r.t. ``deltas`` and ``boxes``.
    """
    dtype = torch.float64 if deltas.dtype == torch.float64 else torch.float32
    deltas = deltas.to(dtype)
    boxes = boxes.to(dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=-1,
    )


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes (torchvision's ``box_area``: negative for inverted boxes, no clamp).

    Args:
        boxes (Tensor[N, 4]): xyxy boxes, any frame.

    Returns:
        Tensor[N]: (x2 - x1) * (y2 - y1) in the frame's squared unit.
    """
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas, each Tensor[N, M]."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])  # [N, M, 2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter, area1[:, None] + area2 - inter


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of two sets of xyxy boxes (torchvision's ``box_iou``).

    Args:
        boxes1 (Tensor[N, 4]): xyxy boxes.
        boxes2 (Tensor[M, 4]): xyxy boxes in the same frame.

    Returns:
        Tensor[N, M]: intersection over union; NaN where both boxes are empty (0 / 0).
    """
    inter, union = _inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019, Eq. in Alg. 1), as DETR's ``box_ops``.

    ``GIoU = IoU - (|C| - |A ∪ B|) / |C|`` with C the smallest box enclosing A and B. Boxes must have
    x2 >= x1 and y2 >= y1 for the value to be meaningful (the reference asserts it; diffdet does not
    inspect values, so degenerate boxes give NaN or inf instead of an error).

    Args:
        boxes1 (Tensor[N, 4]): xyxy boxes.
        boxes2 (Tensor[M, 4]): xyxy boxes in the same frame.

    Returns:
        Tensor[N, M]: GIoU in [-1, 1]. Differentiable.
    """
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)  # [N, M, 2]
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / area
