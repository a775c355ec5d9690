"""COCO box evaluation through pycocotools (``COCOeval``, iouType "bbox"), as detectron2's
``COCOEvaluator`` runs it: detections of contiguous labels become COCO results entries with the
dataset's own category ids, scored against the dataset's annotations (crowd boxes included).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.evaluation.results import ResultsEvaluator
from diffdet.optional import pycocotools

if TYPE_CHECKING:
    from diffdet.data.coco import CocoDetection

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_box_ap(coco_gt, results: list[dict], image_ids: list[int]) -> dict[str, float]:
    """Score detections with pycocotools.

    Args:
        coco_gt (pycocotools.coco.COCO): ground truth (crowd boxes included, as COCO intends).
        results (list[dict]): COCO results entries (see :func:`diffdet.evaluation.results.to_coco_results`).
        image_ids (list[int]): the images that were evaluated.

    Returns:
        dict[str, float]: AP, AP50, AP75, APs, APm, APl as fractions in [0, 1] (−1 where a size
        range has no GT, as pycocotools reports). All zero when there are no detections.

    Raises:
        diffdet.optional.MissingDependencyError: pycocotools is not installed.
    """
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    cocoeval = pycocotools("cocoeval", "COCO evaluation")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = cocoeval.COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRICS, evaluator.stats[:6], strict=True)}


class COCOEvaluator(ResultsEvaluator):
    """COCO box AP (:func:`coco_box_ap`) of the detections on a COCO-format dataset.

    Args:
        dataset (CocoDetection): the evaluated dataset (its ``coco`` ground truth and category ids).
        results_path (str | Path | None): rank 0 writes the COCO results JSON here.
    """

    def __init__(self, dataset: CocoDetection, results_path: str | Path | None = None) -> None:
        super().__init__(dataset.category_ids, results_path)
        self.coco_gt = dataset.coco

    def score(self, results: list[dict], image_ids: list[int]) -> dict[str, float]:
        return coco_box_ap(self.coco_gt, results, image_ids)
