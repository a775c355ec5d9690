"""LVIS box AP on hand-built cases whose values are worked out here (LVIS API, 101 recall points).

With one category, AP is the mean over 10 IoU thresholds of the interpolated precision at the 101
recall points 0, 0.01, ..., 1 (0 beyond the highest recall reached). Categories without GT in the
evaluated images are left out of every mean (the API's −1).
"""

from __future__ import annotations

import copy
import importlib.util
import sys

import numpy as np
import pytest

from diffdet.evaluation.lvis import LVIS_METRICS, lvis_box_ap, require_lvis

needs_lvis = pytest.mark.skipif(
    importlib.util.find_spec("lvis") is None, reason="the lvis package is missing"
)

# a: frequent, b: common, c: rare.
CATEGORIES = [
    {"id": 1, "name": "a", "frequency": "f"},
    {"id": 2, "name": "b", "frequency": "c"},
    {"id": 3, "name": "c", "frequency": "r"},
]
SMALL, MEDIUM, LARGE = [10, 10, 20, 20], [50, 50, 60, 60], [0, 0, 150, 150]  # areas 400, 3600, 22500
FAR = [170, 170, 25, 25]  # overlaps none of the above


def _image(image_id: int, neg=(), not_exhaustive=()) -> dict:
    return {
        "id": image_id, "height": 200, "width": 200, "neg_category_ids": list(neg),
        "not_exhaustive_category_ids": list(not_exhaustive),
        "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg",
    }  # fmt: skip


def _gt(images: list[dict], boxes: list[tuple[int, int, list[float]]]) -> dict:
    """An LVIS dict; ``boxes`` are (image_id, category_id, xywh)."""
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3]}
        for i, (img, cat, box) in enumerate(boxes)
    ]
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}


def _det(image_id: int, category_id: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def _ap(gt: dict, detections: list[dict]) -> dict[str, float]:
    return lvis_box_ap(gt, detections, [img["id"] for img in gt["images"]])


@needs_lvis
def test_a_perfect_detector_scores_one_everywhere():
    boxes = [(1, 1, SMALL), (1, 2, MEDIUM), (2, 3, LARGE), (2, 1, MEDIUM)]
    gt = _gt([_image(1), _image(2)], boxes)
    detections = [_det(img, cat, box, 0.9) for img, cat, box in boxes]
    metrics = _ap(gt, detections)
    assert list(metrics) == list(LVIS_METRICS)
    assert metrics == pytest.approx(dict.fromkeys(LVIS_METRICS, 1.0))  # precision is tp / (tp + fp + eps)


@needs_lvis
def test_one_missed_object_halves_recall():
    # Two GT of "a", one found: precision 1 at the 51 recall points 0..0.50, then 0 -> AP = 51/101.
    gt = _gt([_image(1), _image(2)], [(1, 1, MEDIUM), (2, 1, MEDIUM)])
    metrics = _ap(gt, [_det(1, 1, MEDIUM, 0.9)])
    assert metrics["AP"] == pytest.approx(51 / 101)
    assert metrics["AP50"] == metrics["AP75"] == metrics["APm"] == metrics["APf"] == metrics["AP"]
    assert metrics["APs"] == metrics["APl"] == metrics["APr"] == metrics["APc"] == -1  # no GT there


@needs_lvis
def test_one_false_positive_above_the_true_one_gives_half():
    # Ranked: FP (0.9), TP (0.5): precision [0, 0.5], interpolated 0.5 at every recall point.
    gt = _gt([_image(1)], [(1, 1, MEDIUM)])
    metrics = _ap(gt, [_det(1, 1, FAR, 0.9), _det(1, 1, MEDIUM, 0.5)])
    assert metrics["AP"] == pytest.approx(0.5)


@needs_lvis
def test_unmatched_detection_of_a_not_exhaustive_category_is_ignored():
    gt = _gt([_image(1, not_exhaustive=[1])], [(1, 1, MEDIUM)])
    metrics = _ap(gt, [_det(1, 1, FAR, 0.9), _det(1, 1, MEDIUM, 0.5)])
    assert metrics["AP"] == pytest.approx(1.0)


@needs_lvis
def test_federated_scoring_counts_negative_categories_only():
    # Image 1 has GT "a" only and lists "b" as verified absent; "c" is unknown there. Image 2 has GT "b".
    gt = _gt([_image(1, neg=[2]), _image(2)], [(1, 1, MEDIUM), (2, 2, MEDIUM)])
    perfect = [_det(1, 1, MEDIUM, 0.8), _det(2, 2, MEDIUM, 0.5)]
    unknown = _ap(gt, [*perfect, _det(1, 3, FAR, 0.99)])  # "c" on image 1: not scored at all
    assert unknown["AP"] == pytest.approx(1.0)
    negative = _ap(gt, [*perfect, _det(1, 2, FAR, 0.99)])  # "b" on image 1: a false positive of "b"
    assert negative["APf"] == pytest.approx(1.0) and negative["APc"] == pytest.approx(0.5)
    assert negative["AP"] == pytest.approx((1.0 + 0.5) / 2)


@needs_lvis
@pytest.mark.parametrize(("others", "expected"), [(299, 1.0), (300, 0.0)])
def test_only_the_300_best_detections_per_image_count(others, expected):
    gt = _gt([_image(1)], [(1, 1, MEDIUM)])
    noise = [_det(1, 3, FAR, 0.9) for _ in range(others)]  # category "c": unscored on image 1
    metrics = _ap(gt, [*noise, _det(1, 1, MEDIUM, 0.1)])
    assert metrics["AP"] == pytest.approx(expected)


@needs_lvis
def test_no_detections_score_zero_and_inputs_are_kept():
    gt = _gt([_image(1)], [(1, 1, MEDIUM)])
    assert _ap(gt, []) == dict.fromkeys(LVIS_METRICS, 0.0)
    detections = [_det(1, 1, MEDIUM, 0.9)]
    _ap(gt, detections)
    assert detections == [_det(1, 1, MEDIUM, 0.9)]


def test_a_missing_lvis_package_is_named_with_its_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lvis", None)  # makes "import lvis" fail
    with pytest.raises(ImportError, match=r"needs the 'lvis' package.*pip install 'lvis>=0.5.3'"):
        require_lvis()


@needs_lvis
def test_the_numpy_alias_lvis_needs_exists_only_during_the_evaluation():
    gt = _gt([_image(1)], [(1, 1, MEDIUM)])
    _ap(gt, [_det(1, 1, MEDIUM, 0.9)])
    assert not hasattr(np, "float")
