"""Merging the detections of test-time-augmented inputs into one set per image (REFERENCE.md §11).

Two merges, each with the published constants as defaults:

- :func:`soft_vote_merge`, the published default ("cvpods" path, ``CVPODS_TTA True``): class-separated
  soft voting. The best remaining box and every box with IoU >= 0.65 to it form a group; the group
  becomes its score-weighted mean box (with the group's best score and class) plus copies of its members
  at score x (1 - IoU) where that is >= 0.05; then the best ``max_detections`` are kept and clipped.
- :func:`nms_merge`, detectron2's path (``CVPODS_TTA False``): clip, keep scores > 1e-8, class-aware NMS
  at IoU 0.5, keep the best 100.

Both take the pooled detections of every augmented input, already mapped back to the original image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

VOTE_IOU = 0.65
"""IoU at or above which a box joins the best box's group (``vote_thresh`` of the published code)."""
SOFT_VOTE_FLOOR = 0.05
"""A group member's copy is kept when its decayed score is at least this (``INFERENCE_TH``, hard-coded)."""
NMS_IOU = 0.5
"""detectron2's ``MODEL.ROI_HEADS.NMS_THRESH_TEST``."""
NMS_MAX_DETECTIONS = 100
"""detectron2's ``TEST.DETECTIONS_PER_IMAGE``."""
NMS_SCORE_FLOOR = 1e-8
"""The score threshold the published code hands to ``fast_rcnn_inference_single_image``."""


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes [n, 4] to an image of (h, w) pixels, as detectron2's ``Boxes.clip``."""
    h, w = image_size
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)), dim=-1)


def _soft_vote_rows(det: np.ndarray, vote_iou: float, score_floor: float) -> np.ndarray:
    """The published ``bbox_vote`` loop on rows (x1, y1, x2, y2, score, label) sorted by decreasing score.

    float32 throughout, as the published torch code; areas without +1. A best box of zero area has a
    NaN IoU with itself, so it joins no group and drops out, as in the published code.
    """
    out: list[np.ndarray] = []
    while det.shape[0] > 0:
        area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
        w = np.clip(np.minimum(det[0, 2], det[:, 2]) - np.maximum(det[0, 0], det[:, 0]), 0.0, None)
        h = np.clip(np.minimum(det[0, 3], det[:, 3]) - np.maximum(det[0, 1], det[:, 1]), 0.0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (area[0] + area - inter)
        in_group = iou >= vote_iou
        group, group_iou = det[in_group], iou[in_group]
        det = det[iou < vote_iou]
        if group.shape[0] <= 1:
            out.append(group)
            continue
        copies = group.copy()
        copies[:, 4] *= 1 - group_iou
        copies = copies[copies[:, 4] >= score_floor]
        weights = group[:, 4:5]
        merged = np.empty((1, 6), dtype=np.float32)
        merged[0, :4] = (group[:, :4] * weights).sum(axis=0) / weights.sum()
        merged[0, 4] = group[:, 4].max()
        merged[0, 5] = group[0, 5]
        out.append(merged)
        out.append(copies)
    return np.concatenate(out, axis=0) if out else np.zeros((0, 6), dtype=np.float32)


def soft_vote_merge(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    image_size: tuple[int, int],
    *,
    vote_iou: float = VOTE_IOU,
    score_floor: float = SOFT_VOTE_FLOOR,
    max_detections: int | None = 500,
) -> dict[str, Tensor]:
    """The published soft-vote merge (``_merge_detections_cvpods_tta``).

    Classes are kept apart as the published code does it: every coordinate is offset by
    label x (max coordinate + 1) before voting and the offset is removed after (so coordinates round
    as they do there). No score threshold and no empty-box removal, as published.

    Args:
        boxes (Tensor[n, 4]): pooled detections, xyxy pixels of the original image.
        scores (Tensor[n]): their scores.
        labels (Tensor[n]): their int64 class labels.
        image_size: (h, w) of the original image; the merged boxes are clipped to it.
        vote_iou: IoU at or above which a box joins the best box's group.
        score_floor: decayed copies scoring below it are dropped.
        max_detections: keep this many best detections (the published ``NUM_PROPOSALS``); None or 0
            keeps all.

    Returns:
        ``boxes`` [m, 4] float32, ``scores`` [m] float32, ``labels`` [m] int64 by decreasing score, on
        the device of ``boxes`` (the vote itself runs on the CPU: it is a sequential loop).
    """
    device = boxes.device
    b = boxes.detach().float().cpu().numpy()
    s = scores.detach().float().cpu().numpy()
    lab = labels.detach().cpu().numpy().astype(np.float32)
    if b.shape[0] == 0:
        rows = np.zeros((0, 6), dtype=np.float32)
        offset = np.float32(0)
    else:
        offset = b.max() + np.float32(1)
        det = np.concatenate([b + lab[:, None] * offset, s[:, None], lab[:, None]], axis=1)
        det = det[np.argsort(-s, kind="stable")]
        rows = _soft_vote_rows(det, vote_iou, score_floor)
        rows = rows[np.argsort(-rows[:, 4], kind="stable")]
        rows[:, :4] -= rows[:, 5:6] * offset
    if max_detections and rows.shape[0] > max_detections:
        rows = rows[:max_detections]
    merged = torch.from_numpy(np.ascontiguousarray(rows)).to(device)
    return {
        "boxes": clip_boxes(merged[:, :4], image_size),
        "scores": merged[:, 4].contiguous(),
        "labels": merged[:, 5].long(),
    }


def nms_merge(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    image_size: tuple[int, int],
    *,
    nms_iou: float = NMS_IOU,
    max_detections: int | None = NMS_MAX_DETECTIONS,
    score_floor: float = NMS_SCORE_FLOOR,
) -> dict[str, Tensor]:
    """detectron2's merge (``_merge_detections`` + ``fast_rcnn_inference_single_image``).

    Drops non-finite boxes, clips to the image, keeps scores > ``score_floor``, runs class-aware NMS
    (suppress IoU > ``nms_iou``) and keeps the ``max_detections`` best (None: all).

    Args:
        boxes (Tensor[n, 4]), scores (Tensor[n]), labels (Tensor[n]): pooled detections, xyxy pixels
            of the original image.
        image_size: (h, w) of the original image.

    Returns:
        ``boxes`` [m, 4], ``scores`` [m], ``labels`` [m] int64, by decreasing score.
    """
    from diffdet.ops import batched_nms

    boxes, scores, labels = boxes.float(), scores.float(), labels.long()
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes, scores, labels = clip_boxes(boxes[valid], image_size), scores[valid], labels[valid]
    keep = scores > score_floor
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_iou)
    if max_detections is not None:
        keep = keep[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
