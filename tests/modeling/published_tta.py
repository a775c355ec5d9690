"""Transcriptions of the published TTA pieces, kept apart from diffdet's code to test it against.

From DiffusionDet ``diffusiondet/test_time_augmentation.py`` (``filter_boxes``, ``batched_vote_nms``,
``bbox_vote``, ``get_soft_dets_sum``, ``merge_result_from_multi_scales``, the clip of
``_merge_detections_cvpods_tta``) and detectron2 (``ResizeTransform`` / ``HFlipTransform.apply_box``,
``fast_rcnn_inference_single_image``), reduced to plain tensors and arrays.
"""

from __future__ import annotations

import numpy as np
import torch


def filter_boxes(boxes, min_scale, max_scale):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return (w * h > min_scale * min_scale) & (w * h < max_scale * max_scale)


def get_soft_dets_sum(vote_det, vote_det_iou):
    soft_vote_det = vote_det.detach().clone()
    soft_vote_det[:, 4] *= 1 - vote_det_iou
    INFERENCE_TH = 0.05
    soft_index = torch.where(soft_vote_det[:, 4] >= INFERENCE_TH)[0]
    soft_vote_det = soft_vote_det[soft_index, :]
    vote_det[:, :4] *= vote_det[:, 4:5].repeat(1, 4)
    max_score = vote_det[:, 4].max()
    det_accu_sum = torch.zeros((1, 6), device=vote_det.device)
    det_accu_sum[:, :4] = torch.sum(vote_det[:, :4], dim=0) / torch.sum(vote_det[:, 4])
    det_accu_sum[:, 4] = max_score
    det_accu_sum[:, 5] = vote_det[0, 5]
    if soft_vote_det.shape[0] > 0:
        det_accu_sum = torch.cat((det_accu_sum, soft_vote_det), dim=0)
    return det_accu_sum


def bbox_vote(boxes, scores, labels, vote_thresh):
    det = torch.cat((boxes, scores.reshape(-1, 1), labels.reshape(-1, 1)), dim=1)
    vote_results = torch.zeros(0, 6, device=det.device)
    if det.numel() == 0:
        return vote_results[:, :4], vote_results[:, 4], vote_results[:, 5]
    order = scores.argsort(descending=True)
    det = det[order]
    while det.shape[0] > 0:
        area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
        xx1 = torch.max(det[0, 0], det[:, 0])
        yy1 = torch.max(det[0, 1], det[:, 1])
        xx2 = torch.min(det[0, 2], det[:, 2])
        yy2 = torch.min(det[0, 3], det[:, 3])
        w = torch.clamp(xx2 - xx1, min=0.0)
        h = torch.clamp(yy2 - yy1, min=0.0)
        inter = w * h
        iou = inter / (area[0] + area[:] - inter)
        merge_index = torch.where(iou >= vote_thresh)[0]
        vote_det = det[merge_index, :]
        det = det[iou < vote_thresh]
        if merge_index.shape[0] <= 1:
            vote_results = torch.cat((vote_results, vote_det), dim=0)
        else:
            det_accu_sum = get_soft_dets_sum(vote_det, iou[merge_index])
            vote_results = torch.cat((vote_results, det_accu_sum), dim=0)
    order = vote_results[:, 4].argsort(descending=True)
    vote_results = vote_results[order, :]
    return vote_results[:, :4], vote_results[:, 4], vote_results[:, 5]


def merge_result(boxes, scores, labels, shape_hw, vote_thresh=0.65, max_detection=500):
    """``batched_vote_nms`` + ``merge_result_from_multi_scales`` + the final ``Boxes.clip``."""
    labels = labels.float()
    max_coordinates = boxes.max() + 1
    offsets = labels.reshape(-1, 1) * max_coordinates
    boxes = boxes + offsets
    boxes, scores, labels = bbox_vote(boxes, scores, labels, vote_thresh)
    boxes -= labels.reshape(-1, 1) * max_coordinates
    if boxes.shape[0] > max_detection > 0:
        boxes, scores, labels = boxes[:max_detection], scores[:max_detection], labels[:max_detection]
    h, w = shape_hw
    boxes = torch.stack(
        (boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)),
        dim=1,
    )
    return boxes, scores, labels.long()


def nms_merge(boxes, scores, labels, shape_hw, num_classes, nms_thresh=0.5, topk=100):
    """``_merge_detections`` + ``fast_rcnn_inference_single_image`` (torchvision's batched_nms)."""
    from torchvision.ops import batched_nms

    scores_2d = torch.zeros(len(boxes), num_classes + 1)
    for i, (c, s) in enumerate(zip(labels, scores, strict=True)):
        scores_2d[i, c] = s
    scores_2d = scores_2d[:, :-1]
    h, w = shape_hw
    boxes = torch.stack(
        (boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)),
        dim=1,
    )
    mask = scores_2d > 1e-8
    inds = mask.nonzero()
    boxes, scores_kept = boxes[inds[:, 0]], scores_2d[mask]
    keep = batched_nms(boxes, scores_kept, inds[:, 1], nms_thresh)[:topk]
    return boxes[keep], scores_kept[keep], inds[keep, 1]


def _apply_box(box: np.ndarray, apply_coords) -> np.ndarray:
    # detectron2 Transform.apply_box: transform the 4 corners, take their min and max.
    idxs = np.array([(0, 1), (2, 1), (0, 3), (2, 3)]).flatten()
    coords = np.asarray(box).reshape(-1, 4)[:, idxs].reshape(-1, 2)
    coords = apply_coords(coords).reshape((-1, 4, 2))
    return np.concatenate((coords.min(axis=1), coords.max(axis=1)), axis=1)


def resize_box(box: np.ndarray, h: int, w: int, new_h: int, new_w: int) -> np.ndarray:
    """ResizeTransform(h, w, new_h, new_w).apply_box."""

    def apply_coords(coords):
        coords[:, 0] = coords[:, 0] * (new_w * 1.0 / w)
        coords[:, 1] = coords[:, 1] * (new_h * 1.0 / h)
        return coords

    return _apply_box(box, apply_coords)


def hflip_box(box: np.ndarray, width: int) -> np.ndarray:
    """HFlipTransform(width).apply_box."""

    def apply_coords(coords):
        coords[:, 0] = width - coords[:, 0]
        return coords

    return _apply_box(box, apply_coords)
