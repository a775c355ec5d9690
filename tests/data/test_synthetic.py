"""The synthetic shapes dataset: seeded, COCO-valid, varied, with tight boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffdet.data.coco import CocoDetection
from diffdet.data.synthetic import CLASSES, SyntheticSpec, generate

SPEC = SyntheticSpec(
    num_train=12, num_val=4, min_image_size=64, max_image_size=96, max_object_size=40, seed=7
)


def test_generation_is_seeded_and_byte_identical(tmp_path):
    a = generate(tmp_path / "a", SPEC)
    b = generate(tmp_path / "b", SPEC)
    assert a["train_annotations"].read_bytes() == b["train_annotations"].read_bytes()
    assert (a["val_images"] / "000001.png").read_bytes() == (b["val_images"] / "000001.png").read_bytes()
    c = generate(tmp_path / "c", SyntheticSpec(**{**SPEC.__dict__, "seed": 8}))
    assert c["train_annotations"].read_bytes() != a["train_annotations"].read_bytes()


def test_dataset_loads_with_varied_classes_counts_and_sizes(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")
    paths = generate(tmp_path, SPEC)
    train = CocoDetection(paths["train_images"], paths["train_annotations"])
    val = CocoDetection(paths["val_images"], paths["val_annotations"])
    assert len(train) == 12 and len(val) == 4
    assert train.class_names == list(CLASSES)
    counts = [len(r.labels) for r in train.records]
    assert min(counts) >= 1 and max(counts) <= SPEC.max_objects and len(set(counts)) > 1
    assert len({int(label) for r in train.records for label in r.labels}) == len(CLASSES)
    sides = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] for r in train.records])
    assert sides.min() >= 1 and sides.max() <= SPEC.max_object_size
    assert len({(r.height, r.width) for r in train.records}) > 1


def test_shape_areas_fit_their_boxes(tmp_path):
    """Each box is the extent of its shape: the shape fills between 20% and 100% of it."""
    paths = generate(tmp_path, SPEC)
    data = json.loads(paths["train_annotations"].read_text())
    for ann in data["annotations"][:10]:
        assert ann["area"] <= ann["bbox"][2] * ann["bbox"][3]
        assert ann["area"] > 0.2 * ann["bbox"][2] * ann["bbox"][3]  # a shape, not a speck
