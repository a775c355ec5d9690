"""The evaluator interface on hand-made detections: ``process`` batch by batch then ``evaluate`` gives
exactly the scoring functions' metrics (pycocotools, the LVIS API, the CrowdHuman toolkit's rules), for
the evaluator :func:`build_evaluator` picks; ``reset`` starts over; results files are sorted."""

from __future__ import annotations

import copy
import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from evalkit import ANNOTATIONS, COCO128, StubDetector

from diffdet.data.coco import CocoDetection
from diffdet.data.crowdhuman import CrowdHumanDetection
from diffdet.evaluation import DatasetEvaluator, build_evaluator, inference_on_dataset
from diffdet.evaluation.coco import COCOEvaluator, coco_box_ap
from diffdet.evaluation.crowdhuman import CrowdHumanEvaluator, score_results
from diffdet.evaluation.lvis import LVISEvaluator, lvis_box_ap
from diffdet.evaluation.results import to_coco_results

needs_coco128 = pytest.mark.skipif(not ANNOTATIONS.is_file(), reason=f"coco128 not found at {COCO128}")


def _outputs(boxes: list[np.ndarray], labels: list[np.ndarray], num_classes: int, seed: int) -> list[dict]:
    """Per image: jittered copies of the given boxes, a quarter of them relabelled at random, plus a
    false positive; random scores."""
    rng = np.random.default_rng(seed)
    outputs = []
    for image_boxes, image_labels in zip(boxes, labels, strict=True):
        xyxy = np.concatenate([image_boxes.reshape(-1, 4), [[1.0, 2.0, 20.0, 30.0]]])
        n = len(xyxy)
        relabel = rng.uniform(size=n) < 0.25
        label = np.where(relabel, rng.integers(0, num_classes, n), np.r_[image_labels, 0])
        outputs.append({
            "boxes": torch.tensor(xyxy + rng.normal(0, 3, (n, 4)), dtype=torch.float32),
            "scores": torch.tensor(rng.uniform(0.05, 1, n), dtype=torch.float32),
            "labels": torch.tensor(label, dtype=torch.long),
        })  # fmt: skip
    return outputs


def _feed(evaluator: DatasetEvaluator, image_ids: list[int], outputs: list[dict]) -> None:
    """Two batches, the second first (order must not matter)."""
    metas = [{"image_id": i, "orig_size": (0, 0)} for i in image_ids]
    evaluator.process(metas[2:], outputs[2:])
    evaluator.process(metas[:2], outputs[:2])


def _entries(image_ids, outputs, category_ids) -> list[dict]:
    pairs = zip(image_ids, outputs, strict=True)
    return [r for i, out in pairs for r in to_coco_results(i, out, category_ids)]


@needs_coco128
def test_coco_evaluator_scores_as_pycocotools_and_writes_sorted_results(tmp_path):
    dataset = CocoDetection(COCO128 / "train2017", ANNOTATIONS, max_images=4)
    ids = [r.image_id for r in dataset.records]
    records = dataset.records
    outputs = _outputs([r.boxes for r in records], [r.labels for r in records], num_classes=80, seed=0)
    evaluator = build_evaluator(dataset, tmp_path / "results.json")
    assert type(evaluator) is COCOEvaluator
    evaluator.process([{"image_id": ids[0]}], _outputs([np.zeros((0, 4))], [[]], 80, seed=9))
    evaluator.reset()  # forgets that image
    _feed(evaluator, ids, outputs)
    metrics = evaluator.evaluate()
    entries = _entries(ids, outputs, dataset.category_ids)
    assert metrics == coco_box_ap(dataset.coco, copy.deepcopy(entries), ids)  # loadRes adds keys
    assert 0 < metrics["AP50"] < 1
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == sorted(entries, key=lambda r: (r["image_id"], -r["score"]))


@pytest.mark.skipif(importlib.util.find_spec("lvis") is None, reason="the lvis package is missing")
def test_lvis_evaluator_scores_as_the_lvis_api():
    boxes = {1: [[10, 10, 60, 50], [70, 20, 90, 80]], 2: [[5, 5, 40, 40]], 3: [[0, 0, 30, 30]], 4: []}
    gt = {
        "images": [{"id": i, "height": 100, "width": 100, "neg_category_ids": [3],
                    "not_exhaustive_category_ids": [2] if i == 2 else []} for i in boxes],
        "annotations": [{"id": 10 * i + k, "image_id": i, "category_id": 1 + k % 2,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
                        for i, bs in boxes.items() for k, (x0, y0, x1, y1) in enumerate(bs)],
        "categories": [{"id": c, "frequency": "rcf"[c - 1], "image_count": 1} for c in (1, 2, 3)],
    }  # fmt: skip
    dataset = SimpleNamespace(coco=SimpleNamespace(dataset=gt), category_ids=[1, 2, 3], is_lvis=True)
    evaluator = build_evaluator(dataset)
    assert type(evaluator) is LVISEvaluator
    ids = list(boxes)
    labels = [np.arange(len(b)) % 2 for b in boxes.values()]
    outputs = _outputs([np.array(b, dtype=np.float64) for b in boxes.values()], labels, 3, seed=1)
    _feed(evaluator, ids, outputs)
    metrics = evaluator.evaluate()
    assert metrics == lvis_box_ap(gt, _entries(ids, outputs, [1, 2, 3]), ids)
    assert metrics["AP50"] > 0


def test_crowdhuman_evaluator_scores_one_class_as_the_toolkit(coco128_odgt, tmp_path):
    dataset = CrowdHumanDetection(coco128_odgt["images"], coco128_odgt["odgt"])
    ids = [r.image_id for r in dataset.records]
    records = dataset.records
    outputs = _outputs([r.boxes for r in records], [r.labels + 1 for r in records], num_classes=2, seed=2)
    evaluator = build_evaluator(dataset, tmp_path / "dt.odgt", crowdhuman_label=1)
    assert type(evaluator) is CrowdHumanEvaluator
    _feed(evaluator, ids, outputs)
    metrics = evaluator.evaluate()
    chosen = [out["labels"] == 1 for out in outputs]
    kept = [{"boxes": out["boxes"][keep], "scores": out["scores"][keep], "labels": out["labels"][keep] * 0}
            for out, keep in zip(outputs, chosen, strict=True)]  # fmt: skip
    assert metrics == score_results(dataset, _entries(ids, kept, [1]), ids)
    assert 0 < metrics["recall"] < 1
    lines = [json.loads(line) for line in (tmp_path / "dt.odgt").read_text().splitlines()]
    assert [line["ID"] for line in lines] == [r.name for r in dataset.records]
    assert sum(len(line["dtboxes"]) for line in lines) == sum(len(k["scores"]) for k in kept)


@needs_coco128
def test_seeded_detections_do_not_depend_on_the_batch_size():
    dataset = CocoDetection(COCO128 / "train2017", ANNOTATIONS, max_images=3)
    model = StubDetector(dataset)
    one, three = (
        inference_on_dataset(model, dataset, build_evaluator(dataset), batch_size=b, seed=5) for b in (1, 3)
    )
    assert one == three and one["AP50"] > 0
    other_seed = inference_on_dataset(model, dataset, build_evaluator(dataset), seed=6)
    assert other_seed != one  # the seed reaches the detector
