"""LVIS-format annotation files: image paths from coco_url, labels, federated fields, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffdet.data.coco import BadAnnotationError, CocoDetection
from diffdet.metadata.lvis import lvis_v1_categories

pytest.importorskip("pycocotools", reason="pycocotools is not installed (LVIS files are read through it)")


def lvis_file(tmp_path, **image_extra) -> tuple:
    """A 2-image LVIS v1 file (all 1203 categories) with images under ``root/val2017``."""
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    images = []
    for image_id, size in ((139, (40, 30)), (285, (24, 32))):
        Image.new("RGB", size, (image_id % 255, 0, 0)).save(root / "val2017" / f"{image_id:012d}.jpg")
        images.append({
            "id": image_id, "width": size[0], "height": size[1],
            "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg",
            "neg_category_ids": [3, 1203], "not_exhaustive_category_ids": [1], **image_extra,
        })  # fmt: skip
    annotations = [
        {"id": 1, "image_id": 139, "category_id": 1, "bbox": [1, 2, 10, 5], "area": 50.0},
        {"id": 2, "image_id": 139, "category_id": 1203, "bbox": [5, 5, 4, 4], "area": 16.0},
        {"id": 3, "image_id": 285, "category_id": 42, "bbox": [0, 0, 8, 8], "area": 64.0},
    ]
    categories = [
        {
            "id": c.id,
            "name": c.name,
            "synset": c.synset,
            "frequency": c.frequency,
            "image_count": c.image_count,
        }
        for c in lvis_v1_categories()
    ]
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root, path


def test_lvis_file_reads_images_from_coco_url_and_maps_ids_to_id_minus_one(tmp_path):
    root, path = lvis_file(tmp_path)
    dataset = CocoDetection(root, path)
    assert dataset.is_lvis
    assert dataset.category_ids == list(range(1, 1204))
    assert dataset.class_names[0] == lvis_v1_categories()[0].name
    first, second = dataset.records
    assert first.file_name == str(root / "val2017" / "000000000139.jpg")
    assert first.labels.tolist() == [0, 1202] and second.labels.tolist() == [41]
    np.testing.assert_array_equal(first.boxes, [[1, 2, 11, 7], [5, 5, 9, 9]])
    item = dataset[1]
    assert item["image"].shape == (3, 32, 24) and item["image_id"] == 285
    assert dataset.coco.imgs[139]["not_exhaustive_category_ids"] == [1]  # kept for the evaluation
    assert dataset.image_category_ids() == [[1, 1203], [42]]


def test_a_file_name_wins_over_the_url(tmp_path):
    root, path = lvis_file(tmp_path)
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "elsewhere/a.jpg"
    path.write_text(json.dumps(data))
    assert CocoDetection(root, path).records[0].file_name == str(root / "elsewhere" / "a.jpg")


def test_coco_files_are_not_lvis(tmp_path):
    path = tmp_path / "coco.json"
    image = {"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}
    path.write_text(json.dumps({"images": [image], "annotations": [], "categories": [{"id": 1}]}))
    assert not CocoDetection(tmp_path, path).is_lvis


BAD_EDITS = {
    "no not_exhaustive": (
        lambda d: d["images"][1].pop("not_exhaustive_category_ids"),
        r"images\[1\] \(id 285\) lacks.*'not_exhaustive_category_ids'",
    ),
    "no neg": (lambda d: d["images"][0].pop("neg_category_ids"), r"images\[0\] \(id 139\) lacks.*'neg_"),
    "no url": (lambda d: d["images"][0].pop("coco_url"), r"images\[0\] \(id 139\) has neither file_name nor"),
    "frequency": (
        lambda d: d["categories"][5].update(frequency="x"),
        r"categories\[5\] needs a frequency.*'x'",
    ),
    "category": (
        lambda d: d["annotations"][0].update(category_id=5000),
        r"annotation 1 has unknown category_id",
    ),
}


@pytest.mark.parametrize(("edit", "message"), BAD_EDITS.values(), ids=BAD_EDITS.keys())
def test_bad_lvis_files_stop_with_one_line_naming_the_file(tmp_path, edit, message):
    root, path = lvis_file(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BadAnnotationError, match=message) as info:
        CocoDetection(root, path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
