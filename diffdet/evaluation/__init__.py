"""Scoring detectors on the benchmarks, one module each: COCO (:mod:`.coco`, pycocotools), LVIS
(:mod:`.lvis`, the LVIS API) and CrowdHuman (:mod:`.crowdhuman`, AP50 / mMR / JI as its toolkit),
behind one interface (:mod:`.evaluator`). :func:`build_evaluator` picks the benchmark from the dataset.

Example::

    evaluator = build_evaluator(dataset, results_path="results.json")
    metrics = inference_on_dataset(model, dataset, evaluator, seed=0)  # {"AP": ..., "AP50": ...}
"""

from diffdet.evaluation.build import build_evaluator
from diffdet.evaluation.evaluator import DatasetEvaluator, inference_on_dataset

__all__ = ["DatasetEvaluator", "build_evaluator", "inference_on_dataset"]
