"""CrowdHuman metrics as the benchmark's evaluation toolkit defines them: AP50, mMR, recall and JI.

The CrowdHuman toolkit (CrowdDet's ``lib/evaluate``, reused by Iter-E2EDET and ported to mmdetection's
``CrowdHumanMetric``) scores person boxes of one kind (full, visible or head) per image:

- Boxes are clipped to the image (x1 to [0, W − 1], x2 to [0, W], likewise y) before any matching.
- **Matching for AP and mMR** (the toolkit's "Caltech" rule): detections of an image in decreasing
  score each take the unmatched person box of largest IoU > 0.5; a detection that matches no person
  box but covers an ignore region by IoA = |d ∩ g| / |d| > 0.5 is dropped (neither TP nor FP); any
  other detection is a false positive. Ignore regions may absorb any number of detections.
- **AP50**: detections of all images in decreasing score (stable); recall r_i = TP_i / G and
  precision p_i = TP_i / (TP_i + FP_i) after each, G the number of person boxes; AP is the trapezoid
  sum over consecutive points (r_{i−1}, p_{i−1}), (r_i, p_i). As published, the curve starts at the
  first detection, not at recall 0, so a perfect detector of G boxes scores 1 − 1/G;
  ``ap_from_zero_recall=True`` adds the point (0, p_1) and gives it 1.
- **mMR** (Caltech log-average miss rate, MR^−2): at each reference FPPI f in
  :data:`MR_REFERENCE_FPPI` (10^−2 … 10^0, nine points evenly spaced in log space, rounded to four
  digits as the toolkit writes them), the miss rate 1 − TP_i / G at the first point whose FPPI
  FP_i / N_images ≥ f (the last point when none reaches it); mMR is their geometric mean.
- **Recall**: TP / G over all detections.
- **JI** (Jaccard index): for each score threshold t in 0.0, 0.1, …, 0.9 and each image, detections
  with score > t are matched one-to-one to person boxes with IoU > 0.5 by a maximum-weight bipartite
  matching (weights = IoU), k pairs; unmatched detections covering an ignore region (IoA > 0.5) and
  unmatched person boxes inside one (IoA of the person box > 0.5) are left out, leaving n detections
  and m person boxes; the image scores k / (m + n − k + 10^−6). JI is the best over t of the mean
  over images that have detections or person boxes.

:class:`CrowdHumanEvaluator` scores one class of a detector this way on a CrowdHuman dataset and writes
the detections in the toolkit's format: one JSON line per image, ``ID``, ``height``, ``width`` and
``dtboxes`` of ``{"box": [x, y, w, h], "score", "tag": 1}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffdet.evaluation.results import ResultsEvaluator
from diffdet.outputs import write_text_atomic

if TYPE_CHECKING:
    from diffdet.data.crowdhuman import CrowdHumanDetection

IOU_THRESHOLD = 0.5
MR_REFERENCE_FPPI = (0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
JI_SCORE_THRESHOLDS = tuple(0.1 * i for i in range(10))
JI_EPS = 1e-6  # the toolkit's k / (m + n − k + eps)
METRICS = ("AP50", "mMR", "recall", "JI")


@dataclass
class ImageBoxes:
    """Ground truth and detections of one image.

    Attributes:
        gt_boxes: float [G, 4] xyxy pixels of the annotated boxes (persons and ignore regions).
        gt_ignore: bool [G], True for ignore regions (``tag: "mask"`` or ``extra.ignore``).
        dt_boxes: float [D, 4] xyxy pixels of the detections.
        dt_scores: float [D] detection scores.
        height: image height in pixels (boxes are clipped to it).
        width: image width in pixels.
    """

    gt_boxes: np.ndarray
    gt_ignore: np.ndarray
    dt_boxes: np.ndarray
    dt_scores: np.ndarray
    height: int
    width: int


def clip_to_image(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """The toolkit's clipping: x1 to [0, W − 1], y1 to [0, H − 1], x2 to [0, W], y2 to [0, H].

    Args:
        boxes (np.ndarray[n, 4]): xyxy pixels.
        height (int): image height in pixels.
        width (int): image width in pixels.

    Returns:
        np.ndarray[n, 4]: float64 clipped copy.
    """
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, 0] = np.clip(out[:, 0], 0, width - 1)
    out[:, 1] = np.clip(out[:, 1], 0, height - 1)
    out[:, 2] = np.clip(out[:, 2], 0, width)
    out[:, 3] = np.clip(out[:, 3], 0, height)
    return out


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and IoA (intersection over the area of the ``a`` box) of every pair, [len(a), len(b)];
    0 where the denominator is 0."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    union = area_a + area_b - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    ioa = np.divide(inter, np.broadcast_to(area_a, inter.shape), out=np.zeros_like(inter), where=area_a > 0)
    return iou, ioa


def match_image(image: ImageBoxes, iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The toolkit's greedy ("Caltech") matching of one image (see the module docstring).

    Returns:
        ``(scores, labels)``: float64 [D] scores in decreasing order (stable) and int8 [D] labels,
        1 true positive, 0 false positive, −1 dropped on an ignore region.
    """
    gt = clip_to_image(image.gt_boxes, image.height, image.width)
    dt = clip_to_image(image.dt_boxes, image.height, image.width)
    order = np.argsort(-np.asarray(image.dt_scores, dtype=np.float64), kind="stable")
    dt, scores = dt[order], np.asarray(image.dt_scores, dtype=np.float64)[order]
    ignore = np.asarray(image.gt_ignore, dtype=bool).reshape(-1)
    person, regions = gt[~ignore], gt[ignore]
    iou = _overlaps(dt, person)[0]
    ioa = _overlaps(dt, regions)[1]
    labels = np.zeros(len(dt), dtype=np.int8)
    taken = np.zeros(len(person), dtype=bool)
    for i in range(len(dt)):
        candidates = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(candidates)) if len(person) else -1
        if j >= 0 and candidates[j] > iou_threshold:  # argmax: first of equal IoUs, as the toolkit
            taken[j], labels[i] = True, 1
        elif len(regions) and ioa[i].max() > iou_threshold:
            labels[i] = -1
    return scores, labels


def _curve(images: list[ImageBoxes], iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative TP and FP counts over all kept detections in decreasing score, and G."""
    parts = [match_image(image, iou_threshold) for image in images]
    scores = np.concatenate([s for s, _ in parts]) if parts else np.zeros(0)
    labels = np.concatenate([lab for _, lab in parts]) if parts else np.zeros(0, dtype=np.int8)
    labels = labels[np.argsort(-scores, kind="stable")]
    labels = labels[labels >= 0]
    num_gt = sum(int((~np.asarray(im.gt_ignore, dtype=bool)).sum()) for im in images)
    return np.cumsum(labels == 1), np.cumsum(labels == 0), num_gt


def average_precision(tp: np.ndarray, fp: np.ndarray, num_gt: int, from_zero_recall: bool = False) -> float:
    """AP as the toolkit's trapezoid sum over the detections' (recall, precision) points.

    Args:
        tp (np.ndarray[K]): cumulative true positives after each detection (decreasing score).
        fp (np.ndarray[K]): cumulative false positives.
        num_gt (int): G, person boxes (> 0).
        from_zero_recall (bool): start the curve at (0, p_1) (not the published rule).

    Returns:
        float: AP in [0, 1].
    """
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, 1)
    if from_zero_recall and len(recall):
        recall, precision = np.concatenate([[0.0], recall]), np.concatenate([precision[:1], precision])
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def log_average_miss_rate(tp: np.ndarray, fp: np.ndarray, num_gt: int, num_images: int) -> float:
    """Caltech MR^−2: geometric mean of the miss rate at the reference FPPIs (module docstring).

    Returns:
        float: mMR in [0, 1]; 1 when there is no detection (everything is missed).
    """
    if len(tp) == 0:
        return 1.0
    fppi = fp / num_images
    miss = 1.0 - tp / num_gt
    index = np.searchsorted(fppi, MR_REFERENCE_FPPI, side="left")  # fppi is non-decreasing
    sampled = miss[np.minimum(index, len(miss) - 1)]
    with np.errstate(divide="ignore"):  # a zero miss rate gives log 0 = −inf and mMR 0, as published
        return float(np.exp(np.mean(np.log(sampled))))


def max_weight_matching(weights: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-weight bipartite matching over the positive entries of ``weights``.

    Hungarian algorithm (shortest augmenting paths with potentials) on costs −w, rows ≤ columns;
    zero entries are non-edges and never appear in the result.

    Args:
        weights (np.ndarray[R, C]): non-negative edge weights (0: no edge).

    Returns:
        list[tuple[int, int]]: matched ``(row, column)`` pairs, all of positive weight.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.size == 0 or not (weights > 0).any():
        return []
    keep_rows, keep_cols = np.flatnonzero((weights > 0).any(1)), np.flatnonzero((weights > 0).any(0))
    if len(keep_rows) < weights.shape[0] or len(keep_cols) < weights.shape[1]:  # edgeless rows/columns
        pairs = max_weight_matching(weights[np.ix_(keep_rows, keep_cols)])
        return [(int(keep_rows[r]), int(keep_cols[c])) for r, c in pairs]
    if weights.shape[0] > weights.shape[1]:
        return [(r, c) for c, r in max_weight_matching(weights.T)]
    rows, cols = weights.shape
    cost = -weights
    u, v = np.zeros(rows + 1), np.zeros(cols + 1)
    owner = np.zeros(cols + 1, dtype=np.int64)  # owner[j]: 1-based row assigned to column j (0: none)
    way = np.zeros(cols + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        owner[0], col0 = row, 0
        dist = np.full(cols + 1, np.inf)
        used = np.zeros(cols + 1, dtype=bool)
        while True:
            used[col0] = True
            r0 = owner[col0]
            free = ~used[1:]
            reduced = cost[r0 - 1] - u[r0] - v[1:]
            better = free & (reduced < dist[1:])
            dist[1:][better] = reduced[better]
            way[1:][better] = col0
            masked = np.where(free, dist[1:], np.inf)
            col1 = int(np.argmin(masked)) + 1
            delta = masked[col1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            dist[1:][free] -= delta
            col0 = col1
            if owner[col0] == 0:
                break
        while col0:
            col1 = way[col0]
            owner[col0] = owner[col1]
            col0 = col1
    return [
        (int(owner[j]) - 1, j - 1)
        for j in range(1, cols + 1)
        if owner[j] and weights[owner[j] - 1, j - 1] > 0
    ]


@dataclass
class _JaccardInputs:
    """Per-image quantities JI needs at every score threshold, computed once."""

    scores: np.ndarray  # [D]
    weights: np.ndarray  # [D, G] IoU where > the IoU threshold, else 0 (G: person boxes)
    dt_on_region: np.ndarray  # bool [D]: IoA with some ignore region > the threshold
    gt_on_region: np.ndarray  # bool [G]: likewise for the person boxes


def _jaccard_inputs(image: ImageBoxes, iou_threshold: float) -> _JaccardInputs:
    gt = clip_to_image(image.gt_boxes, image.height, image.width)
    dt = clip_to_image(image.dt_boxes, image.height, image.width)
    ignore = np.asarray(image.gt_ignore, dtype=bool).reshape(-1)
    person, regions = gt[~ignore], gt[ignore]
    iou = _overlaps(dt, person)[0]
    return _JaccardInputs(
        np.asarray(image.dt_scores, dtype=np.float64).reshape(-1),
        np.where(iou > iou_threshold, iou, 0.0),
        _overlaps(dt, regions)[1].max(axis=1, initial=0) > iou_threshold,
        _overlaps(person, regions)[1].max(axis=1, initial=0) > iou_threshold,
    )


def _image_jaccard(inputs: _JaccardInputs, score_threshold: float) -> tuple[float, bool]:
    """k / (m + n − k + eps) of one image and whether it counts (n or m non-zero)."""
    keep = inputs.scores > score_threshold
    matches = max_weight_matching(inputs.weights[keep])
    dt_free = np.ones(int(keep.sum()), dtype=bool)
    gt_free = np.ones(len(inputs.gt_on_region), dtype=bool)
    for i, j in matches:
        dt_free[i] = gt_free[j] = False
    # Unmatched detections and person boxes inside ignore regions are left out.
    n = len(dt_free) - int((dt_free & inputs.dt_on_region[keep]).sum())
    m = len(gt_free) - int((gt_free & inputs.gt_on_region).sum())
    k = len(matches)
    return k / (m + n - k + JI_EPS), bool(n or m)


def jaccard_index(images: list[ImageBoxes], iou_threshold: float = IOU_THRESHOLD) -> float:
    """JI: the best over :data:`JI_SCORE_THRESHOLDS` of the mean per-image Jaccard (module docstring).

    Returns:
        float: JI in [0, 1); 0 when no image has a detection or a person box.
    """
    inputs = [_jaccard_inputs(image, iou_threshold) for image in images]
    best = 0.0
    for threshold in JI_SCORE_THRESHOLDS:
        parts = [_image_jaccard(x, threshold) for x in inputs]
        counted = sum(c for _, c in parts)
        if counted:
            best = max(best, sum(r for r, _ in parts) / counted)
    return best


def crowdhuman_metrics(
    images: list[ImageBoxes], iou_threshold: float = IOU_THRESHOLD, ap_from_zero_recall: bool = False
) -> dict[str, float]:
    """AP50, mMR, recall and JI of detections on CrowdHuman-style ground truth.

    Args:
        images (list[ImageBoxes]): every evaluated image (those without detections too: they count
            in FPPI and in the number of person boxes).
        iou_threshold (float): the matching threshold (0.5 in the benchmark).
        ap_from_zero_recall (bool): see :func:`average_precision`.

    Returns:
        dict[str, float]: ``AP50``, ``mMR``, ``recall``, ``JI`` as fractions.

    Raises:
        ValueError: ``images`` is empty or holds no person box.
    """
    if not images:
        raise ValueError("images must hold at least one image, got none")
    tp, fp, num_gt = _curve(images, iou_threshold)
    if num_gt == 0:
        raise ValueError("images hold no person box (only ignore regions): AP and mMR are undefined")
    return {
        "AP50": average_precision(tp, fp, num_gt, ap_from_zero_recall),
        "mMR": log_average_miss_rate(tp, fp, num_gt, len(images)),
        "recall": float(tp[-1] / num_gt) if len(tp) else 0.0,
        "JI": jaccard_index(images, iou_threshold),
    }


def score_results(dataset, results: list[dict], image_ids: list[int], **options) -> dict[str, float]:
    """CrowdHuman metrics of COCO-results entries on a CrowdHuman dataset.

    Args:
        dataset (CrowdHumanDetection): ground truth; ``records[image_id]`` holds the image's person
            boxes, ignore regions and size.
        results (list[dict]): ``{"image_id", "bbox": [x, y, w, h], "score"}`` entries (see
            :func:`diffdet.evaluation.results.to_coco_results`); their category is not looked at.
        image_ids (list[int]): the evaluated images (with or without detections).
        **options: ``iou_threshold``, ``ap_from_zero_recall`` of :func:`crowdhuman_metrics`.

    Returns:
        dict[str, float]: see :func:`crowdhuman_metrics`.
    """
    boxes: dict[int, list] = {i: [] for i in image_ids}
    for r in results:
        boxes[int(r["image_id"])].append([*r["bbox"], r["score"]])
    images = []
    for image_id in sorted(boxes):
        record = dataset.records[image_id]
        dt = np.array(boxes[image_id], dtype=np.float64).reshape(-1, 5)
        dt[:, 2:4] += dt[:, :2]
        images.append(
            ImageBoxes(
                np.concatenate([record.boxes, record.ignore_boxes]).reshape(-1, 4),
                np.r_[np.zeros(len(record.boxes), bool), np.ones(len(record.ignore_boxes), bool)],
                dt[:, :4],
                dt[:, 4],
                record.height,
                record.width,
            )
        )
    return crowdhuman_metrics(images, **options)


def keep_class(output: dict[str, torch.Tensor], label: int) -> dict[str, torch.Tensor]:
    """The detections of class ``label`` only, relabelled 0 (the one CrowdHuman class).

    Args:
        output: one image's ``boxes`` [n, 4], ``scores`` [n], ``labels`` [n] (and any other [n] field).
        label: the contiguous class kept.
    """
    keep = output["labels"] == label
    out = {k: v[keep] for k, v in output.items()}
    out["labels"] = out["labels"].new_zeros(out["labels"].shape)
    return out


def write_toolkit_results(path: Path, results: list[dict], dataset: CrowdHumanDetection) -> None:
    """Write COCO results entries as the toolkit's detection file (module docstring), a line per image
    of ``dataset`` in its order."""
    boxes: dict[int, list[dict]] = {}
    for r in results:
        boxes.setdefault(int(r["image_id"]), []).append({"box": r["bbox"], "score": r["score"], "tag": 1})
    lines = [
        json.dumps({"ID": r.name, "height": r.height, "width": r.width, "dtboxes": boxes.get(r.image_id, [])})
        for r in dataset.records
    ]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


class CrowdHumanEvaluator(ResultsEvaluator):
    """AP50, mMR, recall and JI (:func:`score_results`) of one class of a detector on a CrowdHuman dataset.

    Args:
        dataset (CrowdHumanDetection): the evaluated dataset.
        label (int): the detector's contiguous class scored (0 for a one-class model); the detections
            of other classes are dropped.
        results_path (str | Path | None): rank 0 writes the detections here.
        toolkit_format (bool): write them in the toolkit's format (module docstring); False: as a COCO
            results JSON file.
    """

    def __init__(
        self,
        dataset: CrowdHumanDetection,
        label: int = 0,
        results_path: str | Path | None = None,
        toolkit_format: bool = True,
    ) -> None:
        super().__init__(dataset.category_ids, results_path)
        self.dataset, self.label, self.toolkit_format = dataset, label, toolkit_format

    def process(self, inputs: list[dict], outputs: list[dict[str, torch.Tensor]]) -> None:
        super().process(inputs, [keep_class(output, self.label) for output in outputs])

    def write_results(self, path: Path, results: list[dict]) -> None:
        if self.toolkit_format:
            write_toolkit_results(path, results, self.dataset)
        else:
            super().write_results(path, results)

    def score(self, results: list[dict], image_ids: list[int]) -> dict[str, float]:
        return score_results(self.dataset, results, image_ids)
