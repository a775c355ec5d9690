"""The COCO loader on real coco128 annotations, odd image modes, EXIF, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffdet.data.coco import BadAnnotationError, BadImageError, CocoDetection, load_coco

pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")

COCO128 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco128"
COCO128_JSON = COCO128 / "annotations" / "instances_train2017.json"
needs_coco128 = pytest.mark.skipif(not COCO128_JSON.is_file(), reason=f"coco128 not found at {COCO128}")


@pytest.fixture(scope="module")
def coco128() -> CocoDetection:
    return CocoDetection(COCO128 / "train2017", COCO128_JSON)


@needs_coco128
def test_coco128_leaves_crowd_boxes_out_of_targets_but_in_evaluation(coco128):
    raw = json.loads(COCO128_JSON.read_text())
    crowd = [a for a in raw["annotations"] if a["iscrowd"]]
    assert len(crowd) == 10
    assert sum(len(r.labels) for r in coco128.records) == len(raw["annotations"]) - len(crowd)
    assert len(coco128.coco.getAnnIds(iscrowd=True)) == len(crowd)  # pycocotools still sees them
    crowd_image = next(r for r in coco128.records if r.image_id == crowd[0]["image_id"])
    x, y, w, h = crowd[0]["bbox"]
    assert not any(np.allclose(b, [x, y, x + w, y + h]) for b in crowd_image.boxes)


@needs_coco128
def test_coco128_maps_category_ids_to_contiguous_labels_and_back(coco128):
    assert len(coco128.category_ids) == 80
    assert coco128.category_ids[0] == 1 and coco128.category_ids[-1] == 90
    assert coco128.label_of[90] == 79 and coco128.label_of[13] == 11  # COCO ids skip 12
    raw = json.loads(COCO128_JSON.read_text())
    ann = next(a for a in raw["annotations"] if not a["iscrowd"] and a["category_id"] > 12)
    record = next(r for r in coco128.records if r.image_id == ann["image_id"])
    x, y, w, h = ann["bbox"]
    row = int(np.argmin(np.abs(record.boxes - [x, y, x + w, y + h]).sum(1)))
    assert coco128.category_ids[record.labels[row]] == ann["category_id"]
    assert coco128.class_names[record.labels[row]] == coco128.coco.cats[ann["category_id"]]["name"]


@needs_coco128
def test_coco128_images_decode_at_their_annotated_size(coco128):
    sizes = {(r.height, r.width) for r in coco128.records}
    assert len(sizes) > 5  # varied sizes
    for index in (0, 7, 100):
        item = coco128[index]
        record = coco128.records[index]
        assert item["image"].shape == (3, record.height, record.width)
        assert item["image"].dtype.is_floating_point is False
        assert item["boxes"].shape == (len(record.labels), 4)


def _write_dataset(
    root: Path, images: dict[str, Image.Image], sizes: dict[str, tuple[int, int]] | None = None
) -> Path:
    entries = []
    for i, (name, image) in enumerate(images.items(), start=1):
        if image is not None:
            image.save(root / name)
        h, w = (sizes or {}).get(name, (image.height, image.width) if image is not None else (8, 8))
        entries.append({"id": i, "file_name": name, "height": h, "width": w})
    anns = [{"id": 1, "image_id": 1, "bbox": [1, 1, 4, 3], "category_id": 7, "iscrowd": 0}]
    path = root / "ann.json"
    path.write_text(
        json.dumps({"images": entries, "annotations": anns, "categories": [{"id": 7, "name": "x"}]})
    )
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_grayscale_rgba_cmyk_palette_images_become_rgb(tmp_path, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image = Image.new(mode, (12, 8))
    ann = _write_dataset(tmp_path, {f"img{suffix}": image})
    item = CocoDetection(tmp_path, ann)[0]
    assert item["image"].shape == (3, 8, 12)
    assert item["labels"].tolist() == [0] and item["boxes"].tolist() == [[1, 1, 5, 4]]


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 5, 10))  # blue strip on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    ann = _write_dataset(tmp_path, {"rot.jpg": None}, {"rot.jpg": (20, 10)})
    item = CocoDetection(tmp_path, ann)[0]
    assert item["image"].shape == (3, 20, 10)  # displayed upright: 10 wide, 20 tall
    top = item["image"][:, 1, 5].tolist()  # the stored left strip is now at the top
    assert top[2] > 200 and top[0] < 60


def test_corrupt_image_raises_naming_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    ann = _write_dataset(tmp_path, {"bad.jpg": None, "good.png": Image.new("RGB", (8, 8))})
    with pytest.raises(BadImageError, match=r"bad\.jpg"):
        CocoDetection(tmp_path, ann)[0]


def test_missing_image_raises_naming_the_file(tmp_path):
    ann = _write_dataset(tmp_path, {"gone.png": None})
    with pytest.raises(BadImageError, match=r"gone\.png"):
        CocoDetection(tmp_path, ann)[0]


def test_image_of_wrong_size_raises(tmp_path):
    ann = _write_dataset(tmp_path, {"a.png": Image.new("RGB", (8, 8))}, {"a.png": (9, 8)})
    with pytest.raises(BadImageError, match=r"a.png is 8x8 .* says 9x8"):
        CocoDetection(tmp_path, ann)[0]


def test_skip_bad_warns_and_returns_the_next_image(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    ann = _write_dataset(tmp_path, {"bad.jpg": None, "good.png": Image.new("RGB", (6, 4))})
    dataset = CocoDetection(tmp_path, ann, skip_bad=True)
    with pytest.warns(UserWarning, match=r"bad\.jpg"):
        item = dataset[0]
    assert item["image_id"] == 2 and item["image"].shape == (3, 4, 6)


def _bad_json(tmp_path: Path, mutate) -> Path:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 2, 2], "category_id": 1}],
        "categories": [{"id": 1, "name": "a"}],
    }
    mutate(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["annotations"][0].update(bbox=[0, 0, 2]), "annotation 5 bbox"),
        (lambda d: d["annotations"][0].update(category_id=3), "annotation 5 has unknown category_id 3"),
        (lambda d: d["annotations"][0].update(image_id=9), "annotation 5 refers to unknown image_id 9"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 2]), "negative width"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] lacks \['file_name'\]"),
        (lambda d: d.pop("categories"), "missing or non-list key 'categories'"),
    ],
)
def test_bad_annotation_file_gives_clear_error(tmp_path, mutate, message):
    path = _bad_json(tmp_path, mutate)
    with pytest.raises(BadAnnotationError, match=message) as info:
        load_coco(path)
    assert str(path) in str(info.value)


def test_annotation_file_that_is_not_json(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text("{ truncated")
    with pytest.raises(BadAnnotationError, match="not valid JSON"):
        load_coco(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_coco(tmp_path / "nope.json")


def test_images_without_annotations_are_kept(tmp_path):
    ann = _write_dataset(tmp_path, {"a.png": Image.new("RGB", (8, 8)), "b.png": Image.new("RGB", (8, 8))})
    dataset = CocoDetection(tmp_path, ann)
    assert len(dataset) == 2
    assert dataset[1]["boxes"].shape == (0, 4) and dataset[1]["labels"].shape == (0,)
