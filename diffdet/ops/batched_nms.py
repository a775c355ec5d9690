"""Class-aware non-maximum suppression with torchvision's semantics, and its plain-PyTorch reference.

Semantics (torchvision's ``batched_nms``): boxes are xyxy in any one frame (input-image pixels in
diffdet); within each class, boxes are visited in decreasing score and a box is suppressed when its IoU
with an already kept box is ``> iou_threshold``; boxes of different classes never suppress each other.
IoU uses torchvision's formula (area = (x2 - x1)(y2 - y1), no +1), so degenerate boxes (x2 < x1) give
the same decisions as torchvision. The result is int64 indices into ``boxes``, by decreasing score.

Ties. torchvision's nms visits equal scores by lower index first (a stable sort); so do the kernels
and the reference, so the keep set equals torchvision's, ties included. The order of the result follows
torchvision's ``batched_nms`` on CPU: up to ``TORCHVISION_VANILLA_MIN_BOXES`` boxes (its coordinate
trick) the stable order; above (its per-class loop) the order of an unstable descending sort of the
kept scores, which the CPU kernel and the reference repeat with the same call. The CUDA kernel always
returns the stable order. (torchvision's coordinate trick lets classes overlap when coordinates are
negative, breaking its own contract; diffdet never mixes classes.)

Two entry points share one kernel: :func:`batched_nms` returns exactly the kept indices (on CUDA it
reads the count back: one host sync, at the end), and :func:`batched_nms_padded` returns a fixed-size
``[K]`` result and a device-side count, with no host sync, for CUDA-graph capture.
"""

from __future__ import annotations

import torch

from diffdet import _extension
from diffdet.ops import _backend, _checks

_OP = "batched_nms"
_PREFERRED = {"cpu": "compiled", "cuda": "compiled"}

# torchvision.ops.batched_nms switches from the coordinate trick to the per-class loop above this many
# boxes on CPU (boxes.numel() > 4000); the tie order differs between the two, so we follow it.
TORCHVISION_VANILLA_MIN_BOXES = 1000


def _check_inputs(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> None:
    _checks.check_shape("boxes", boxes, (None, 4))
    _checks.check_shape("scores", scores, (boxes.shape[0],))
    _checks.check_shape("idxs", idxs, (boxes.shape[0],))
    _checks.check_dtype("boxes", boxes, (torch.float32, torch.float64))
    _checks.check_floating("scores", scores)
    _checks.check_dtype("idxs", idxs, (torch.int64,))
    _checks.check_same_device({"boxes": boxes, "scores": scores, "idxs": idxs})
    if not isinstance(iou_threshold, (int, float)) or iou_threshold != iou_threshold:
        raise ValueError(f"iou_threshold must be a float, got {iou_threshold!r}")
    # Values are checked on CPU only: on CUDA it would cost a host sync (see STYLE.md); the CUDA kernel
    # is safe on any values (a NaN coordinate gives a NaN IoU, which suppresses nothing).
    checked = boxes.device.type == "cpu" and boxes.numel() and not torch.compiler.is_compiling()
    if checked and not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite, got NaN or inf coordinates")


@torch.compiler.assume_constant_result
def _backend_for(device_type: str) -> str:
    """The backend for this device type; a constant to torch.compile (read once, when tracing)."""
    return _backend.select(_OP, torch.device(device_type), _PREFERRED)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware NMS: keep, per class, the boxes not overlapping a higher-scored kept box.

    Args:
        boxes (Tensor[K, 4]): xyxy boxes, any frame (input-image pixels in diffdet); float32 or
            float64; finite (checked on CPU). Degenerate boxes (x2 < x1 or y2 < y1) are allowed.
        scores (Tensor[K]): score per box, any floating dtype, same device.
        idxs (Tensor[K]): int64 class (or any category) per box; different idxs never suppress each other.
        iou_threshold: a box is suppressed when its IoU with a kept box of its class is > this value.

    Returns:
        Tensor[N] int64: indices of the kept boxes, by decreasing score (ties: see the module doc).
        Deterministic. On CUDA, reading N back is the op's one host sync; use
        :func:`batched_nms_padded` inside a CUDA graph.

    Raises:
        ValueError: a shape, dtype, device or value of an argument is wrong (the message names it).
    """
    _check_inputs(boxes, scores, idxs, iou_threshold)
    baseline = _BASELINES.get(_backend_for(boxes.device.type))
    if baseline is not None:
        return baseline(boxes, scores, idxs, iou_threshold)
    return torch.ops.diffdet.batched_nms(boxes, scores, idxs, float(iou_threshold))


def batched_nms_padded(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batched_nms` with a fixed-size result and a device-side count (no host sync).

    Args:
        boxes, scores, idxs, iou_threshold: as for :func:`batched_nms`.

    Returns:
        (keep, count): keep is Tensor[K] int64 whose first ``count`` entries are the kept indices by
        decreasing score, the rest -1; count is a 0-dim int64 tensor on the inputs' device.
        ``keep[:count]`` equals :func:`batched_nms`.

    Raises:
        ValueError: as for :func:`batched_nms`.
    """
    _check_inputs(boxes, scores, idxs, iou_threshold)
    baseline = _BASELINES.get(_backend_for(boxes.device.type))
    if baseline is not None:
        kept = baseline(boxes, scores, idxs, iou_threshold)
        keep = torch.full((boxes.shape[0],), -1, dtype=torch.int64, device=boxes.device)
        keep[: kept.numel()] = kept
        return keep, torch.tensor(kept.numel(), dtype=torch.int64, device=boxes.device)
    keep, count = torch.ops.diffdet.batched_nms_padded(boxes, scores, idxs, float(iou_threshold))
    return keep, count


def _pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair, torchvision's formula and operation order. [n, 4] -> [n, n]."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)  # [n]
    w = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    h = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    inter = w * h  # [n, n]
    return inter / (area[:, None] + area[None] - inter)


def _greedy(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS of one class's boxes [n, 4], given in visiting order; the kept positions, in order."""
    over = (_pairwise_iou(boxes).double() > iou_threshold).tolist()  # [n, n]
    suppressed = [False] * len(over)
    kept = []
    for i, row in enumerate(over):
        if suppressed[i]:
            continue
        kept.append(i)
        for j in range(i + 1, len(row)):
            suppressed[j] = suppressed[j] or row[j]
    return torch.tensor(kept, dtype=torch.int64, device=boxes.device)


def batched_nms_reference(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Plain-PyTorch class-aware NMS (a Python greedy loop per class); same contract as batched_nms.

    Visits each class in decreasing score, ties by lower index; orders the result as torchvision's
    ``batched_nms`` on CPU does (see the module doc).
    """
    num = boxes.shape[0]
    if num == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.sort(dim=0, descending=True, stable=True)[1]  # [K] visiting order
    keep_mask = torch.zeros(num, dtype=torch.bool, device=boxes.device)
    for cls in torch.unique(idxs):
        members = order[idxs[order] == cls]  # this class, in visiting order
        keep_mask[members[_greedy(boxes[members], iou_threshold)]] = True
    if num <= TORCHVISION_VANILLA_MIN_BOXES:
        return order[keep_mask[order]]
    kept = torch.where(keep_mask)[0]
    return kept[scores[kept].sort(0, descending=True)[1]]


def batched_nms_published(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """What the published code runs, for speed comparisons: ``torchvision.ops.batched_nms``."""
    from torchvision.ops import batched_nms as torchvision_batched_nms

    return torchvision_batched_nms(boxes, scores, idxs, iou_threshold)


_BASELINES = {"reference": batched_nms_reference, "published": batched_nms_published}


def _register() -> None:
    """Fake (meta) kernels, so the ops trace under torch.compile and torch.export."""

    @torch.library.register_fake("diffdet::batched_nms")
    def _(boxes, scores, idxs, iou_threshold):
        _check_meta(boxes, scores, idxs)
        count = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((count,), dtype=torch.int64)

    @torch.library.register_fake("diffdet::batched_nms_padded")
    def _(boxes, scores, idxs, iou_threshold):
        _check_meta(boxes, scores, idxs)
        keep = boxes.new_empty((boxes.shape[0],), dtype=torch.int64)
        return keep, boxes.new_empty((), dtype=torch.int64)


def _check_meta(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor) -> None:
    _checks.check_shape("boxes", boxes, (None, 4))
    _checks.check_shape("scores", scores, (boxes.shape[0],))
    _checks.check_shape("idxs", idxs, (boxes.shape[0],))
    _checks.check_dtype("idxs", idxs, (torch.int64,))


if _extension.has_kernel(_OP, "cpu") or _extension.has_kernel(_OP, "cuda"):
    _register()
