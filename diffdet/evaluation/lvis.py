"""LVIS box evaluation through the LVIS API (pip ``lvis``; REFERENCE.md §10), as detectron2's
``LVISEvaluator`` runs it for the published LVIS models.

Per image, only the 300 highest-scoring detections over all classes are kept (``LVISResults``,
``max_dets=300``). ``LVISEval`` then scores them the federated way: an image is scored only on the
categories of its annotations and its ``neg_category_ids``, and unmatched detections of its
``not_exhaustive_category_ids`` are ignored. IoU 0.50:0.05:0.95, 101 recall points, area ranges
small < 32² ≤ medium < 96² ≤ large, and frequency groups r / c / f from the categories' ``frequency``.

The package is optional (``pip install 'diffdet[lvis]'`` or ``pip install lvis``) and imported only
when an LVIS-format dataset is evaluated. :class:`LVISEvaluator` is the evaluator of such a dataset.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from diffdet.evaluation.results import ResultsEvaluator

if TYPE_CHECKING:
    from diffdet.data.coco import CocoDetection

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
LVIS_MAX_DETS = 300
"""Detections per image LVIS evaluates (the official value; detectron2 passes no other)."""


def require_lvis() -> ModuleType:
    """The ``lvis`` package.

    Raises:
        ImportError: it is not installed; the message says how to install it.
    """
    try:
        import lvis
    except ImportError as err:
        raise ImportError(
            "evaluating an LVIS-format dataset needs the 'lvis' package (LVIS API): "
            "pip install 'lvis>=0.5.3' (or pip install 'diffdet[lvis]')"
        ) from err
    return lvis


@contextlib.contextmanager
def _lvis_compat() -> Iterator[None]:
    """Let lvis 0.5.3 run on current NumPy and Python, quietly.

    It calls ``np.float`` (removed in NumPy 1.24) and ``Logger.warn`` (removed in Python 3.13), and
    logs a warning for every in-memory results list. The aliases exist only inside this block, and
    the DeprecationWarning of ``Logger.warn`` is silenced there.
    """
    added = []
    if not hasattr(np, "float"):
        np.float = float
        added.append((np, "float"))
    if not hasattr(logging.Logger, "warn"):
        logging.Logger.warn = logging.Logger.warning
        added.append((logging.Logger, "warn"))
    logger = logging.getLogger("lvis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
        for owner, name in added:
            delattr(owner, name)


def lvis_box_ap(
    gt: dict, results: list[dict], image_ids: list[int], max_dets: int = LVIS_MAX_DETS
) -> dict[str, float]:
    """Score detections with the LVIS API.

    Args:
        gt (dict): the parsed LVIS annotation file (images with ``neg_category_ids`` and
            ``not_exhaustive_category_ids``, categories with ``frequency``), e.g.
            ``CocoDetection.coco.dataset``. The LVIS API adds its bookkeeping keys (``ignore``,
            ``_ignore``) to the annotations; nothing else changes.
        results (list[dict]): COCO-results entries ``{"image_id", "category_id" (LVIS id),
            "bbox": [x, y, w, h] original-image pixels, "score"}`` (see
            :func:`diffdet.evaluation.results.to_coco_results`); not modified.
        image_ids (list[int]): the images that were evaluated.
        max_dets (int): detections kept per image, highest scores first (300 for LVIS).

    Returns:
        dict[str, float]: AP, AP50, AP75, APs, APm, APl, APr, APc, APf as fractions in [0, 1] (−1
        where no category of the group or size has GT, as the LVIS API reports). All zero when
        there are no detections.

    Raises:
        ImportError: the ``lvis`` package is missing.
    """
    lvis = require_lvis()
    if not results:
        return dict.fromkeys(LVIS_METRICS, 0.0)
    with _lvis_compat():
        # The LVIS class only reads a path; build it from the parsed file instead of reading it again.
        lvis_gt = lvis.LVIS.__new__(lvis.LVIS)
        lvis_gt.logger = logging.getLogger("lvis.lvis")
        lvis_gt.dataset = gt
        lvis_gt._create_index()
        # LVISResults adds area/id/segmentation to the entries it keeps: give it copies.
        lvis_dt = lvis.LVISResults(lvis_gt, [dict(r) for r in results], max_dets=max_dets)
        evaluator = lvis.LVISEval(lvis_gt, lvis_dt, iou_type="bbox")
        evaluator.params.img_ids = sorted(image_ids)
        evaluator.run()
        values = evaluator.get_results()
    return {name: float(values[name]) for name in LVIS_METRICS}


class LVISEvaluator(ResultsEvaluator):
    """LVIS box AP (:func:`lvis_box_ap`) of the detections on an LVIS-format dataset.

    Args:
        dataset (CocoDetection): the evaluated dataset (``dataset.is_lvis``; its parsed file and
            category ids).
        results_path (str | Path | None): rank 0 writes the COCO results JSON here.

    Raises:
        ImportError: the ``lvis`` package is missing (at construction, before any inference).
    """

    def __init__(self, dataset: CocoDetection, results_path: str | Path | None = None) -> None:
        require_lvis()
        super().__init__(dataset.category_ids, results_path)
        self.gt = dataset.coco.dataset

    def score(self, results: list[dict], image_ids: list[int]) -> dict[str, float]:
        return lvis_box_ap(self.gt, results, image_ids)
