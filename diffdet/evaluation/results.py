"""Detections as COCO results entries, and the evaluator that collects them over every process.

COCO, LVIS and CrowdHuman are all scored from COCO results entries (``image_id``, ``category_id``,
``bbox`` as x, y, w, h pixels of the original image, ``score``); they differ only in the scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffdet.engine.distributed import gather_objects
from diffdet.evaluation.evaluator import DatasetEvaluator
from diffdet.outputs import write_text_atomic


def to_coco_results(image_id: int, output: dict, category_ids: list[int]) -> list[dict]:
    """COCO results entries of one image.

    Args:
        image_id (int): COCO image id.
        output (dict): ``boxes`` [n, 4] xyxy pixels of the original image, ``scores`` [n],
            ``labels`` [n] contiguous class ids.
        category_ids (list[int]): dataset category id of each contiguous label.

    Returns:
        list[dict]: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection.
    """
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    scores = output["scores"].detach().float().cpu().numpy().reshape(-1)
    labels = output["labels"].detach().cpu().numpy().reshape(-1)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label)]),
            "bbox": [round(float(v), 3) for v in box],
            "score": round(float(score), 5),
        }
        for box, score, label in zip(xywh, scores, labels, strict=True)
    ]


def sort_results(results: list[dict]) -> list[dict]:
    """``results`` by image id, then decreasing score; ties keep their order (one image's detections
    come from one process, so this order does not depend on how the images were split)."""
    return sorted(results, key=lambda r: (r["image_id"], -r["score"]))


class ResultsEvaluator(DatasetEvaluator):
    """Collects COCO results entries; on rank 0, :meth:`score` turns those of every process into metrics.

    Args:
        category_ids (list[int]): the dataset's category id of each contiguous label.
        results_path (str | Path | None): rank 0 writes the results here (:meth:`write_results`).
    """

    def __init__(self, category_ids: list[int], results_path: str | Path | None = None) -> None:
        self.category_ids = list(category_ids)
        self.results_path = Path(results_path) if results_path is not None else None
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._image_ids: list[int] = []

    def process(self, inputs: list[dict], outputs: list[dict[str, torch.Tensor]]) -> None:
        for meta, output in zip(inputs, outputs, strict=True):
            self._results.extend(to_coco_results(meta["image_id"], output, self.category_ids))
            self._image_ids.append(int(meta["image_id"]))

    def evaluate(self) -> dict[str, float] | None:
        gathered = gather_objects((self._results, self._image_ids))
        if gathered is None:
            return None
        results = sort_results([r for part, _ in gathered for r in part])
        image_ids = sorted(i for _, part in gathered for i in part)
        if self.results_path is not None:
            self.write_results(self.results_path, results)
        return self.score(results, image_ids)

    def write_results(self, path: Path, results: list[dict]) -> None:
        """Write the results as a COCO results JSON file."""
        write_text_atomic(path, json.dumps(results))

    def score(self, results: list[dict], image_ids: list[int]) -> dict[str, float]:
        """The metrics of ``results`` (every process's, sorted) over the images ``image_ids``."""
        raise NotImplementedError
