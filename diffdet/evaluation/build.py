"""The evaluator of a dataset: the one place that picks the benchmark from the data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.data.crowdhuman import CrowdHumanDetection

if TYPE_CHECKING:
    from diffdet.data.coco import CocoDetection
    from diffdet.evaluation.results import ResultsEvaluator


def build_evaluator(
    dataset: CocoDetection,
    results_path: str | Path | None = None,
    *,
    crowdhuman_label: int = 0,
    crowdhuman_toolkit_format: bool = True,
) -> ResultsEvaluator:
    """The benchmark's evaluator: CrowdHuman metrics for a CrowdHumanDetection, LVIS box AP for an
    LVIS-format file (``dataset.is_lvis``), COCO box AP otherwise.

    Args:
        dataset (CocoDetection): the evaluated dataset (original-size images).
        results_path (str | Path | None): rank 0 writes the detections here (COCO results JSON; for
            CrowdHuman the toolkit's format unless ``crowdhuman_toolkit_format`` is False).
        crowdhuman_label (int): CrowdHuman: the detector's contiguous class scored.
        crowdhuman_toolkit_format (bool): CrowdHuman: write the toolkit's format, not COCO results.

    Raises:
        ImportError: an LVIS file and no ``lvis`` package (the message says how to install it).
    """
    if isinstance(dataset, CrowdHumanDetection):
        from diffdet.evaluation.crowdhuman import CrowdHumanEvaluator

        return CrowdHumanEvaluator(dataset, crowdhuman_label, results_path, crowdhuman_toolkit_format)
    if dataset.is_lvis:
        from diffdet.evaluation.lvis import LVISEvaluator

        return LVISEvaluator(dataset, results_path)
    from diffdet.evaluation.coco import COCOEvaluator

    return COCOEvaluator(dataset, results_path)
