"""CrowdHuman odgt parsing and the dataset: box kinds, ignore regions, sizes, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdet.data.coco import BadAnnotationError, BadImageError, CocoDetection
from diffdet.data.crowdhuman import CrowdHumanDetection, detection_dataset, read_odgt
from diffdet.data.transforms import TrainTransform


def person(fbox, vbox, hbox, ignore=0, head_ignore=0, tag="person") -> dict:
    return {
        "tag": tag, "fbox": fbox, "vbox": vbox, "hbox": hbox,
        "extra": {"box_id": 0, "occ": 0, "ignore": ignore}, "head_attr": {"ignore": head_ignore, "occ": 0},
    }  # fmt: skip


MASK = [0, 50, 30, 14]
LINES = [
    {
        "ID": "273271,c9db000d5146c15",
        "gtboxes": [
            person([-10, 5, 40, 60], [2, 5, 28, 40], [10, 5, 8, 9]),  # full body leaves the image
            person([50, 4, 20, 30], [50, 4, 20, 20], [55, 4, 6, 6], head_ignore=1),
            person([60, 40, 10, 10], [60, 40, 10, 10], [60, 40, 5, 5], ignore=1),  # an ignored person
            {"tag": "mask", "fbox": MASK, "vbox": MASK, "hbox": MASK, "extra": {"ignore": 1}},
        ],
    },
    {"ID": "284193,faa9000f2678b5e", "gtboxes": []},
]


@pytest.fixture
def crowd(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "Images"
    images.mkdir()
    Image.new("RGB", (80, 64), (10, 20, 30)).save(images / f"{LINES[0]['ID']}.jpg")
    Image.new("RGB", (40, 48), (90, 20, 30)).save(images / f"{LINES[1]['ID']}.jpg")
    odgt = tmp_path / "annotation_val.odgt"
    odgt.write_text("\n".join(json.dumps(line) for line in LINES) + "\n\n")  # a trailing blank line
    return odgt, images


def test_odgt_boxes_of_each_kind_and_ignore_regions(crowd):
    odgt, _ = crowd
    vbox, empty = read_odgt(odgt, "vbox")
    assert vbox.name == LINES[0]["ID"] and vbox.line == 1 and empty.line == 2
    np.testing.assert_array_equal(vbox.boxes, [[2, 5, 30, 45], [50, 4, 70, 24]])  # xywh -> xyxy
    # The ignored person (extra.ignore) and the mask are ignore regions.
    np.testing.assert_array_equal(vbox.ignore_boxes, [[60, 40, 70, 50], [0, 50, 30, 64]])
    fbox = read_odgt(odgt, "fbox")[0]
    np.testing.assert_array_equal(fbox.boxes, [[-10, 5, 30, 65], [50, 4, 70, 34]])
    hbox = read_odgt(odgt, "hbox")[0]  # head_attr.ignore makes the second head an ignore region
    np.testing.assert_array_equal(hbox.boxes, [[10, 5, 18, 14]])
    np.testing.assert_array_equal(hbox.ignore_boxes, [[55, 4, 61, 10], [60, 40, 65, 45], [0, 50, 30, 64]])
    assert empty.boxes.shape == empty.ignore_boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="box must be one of"):
        read_odgt(odgt, "box")


def test_dataset_items_have_the_coco_dataset_interface(crowd):
    odgt, images = crowd
    dataset = CrowdHumanDetection(images, odgt)
    assert len(dataset) == 2 and dataset.category_ids == [1] and dataset.class_names == ["person"]
    assert [r.name for r in dataset.records] == [line["ID"] for line in LINES]
    assert [(r.height, r.width) for r in dataset.records] == [(64, 80), (48, 40)]
    np.testing.assert_array_equal(dataset.aspect_groups(), [0, 1])
    item = dataset[0]
    assert item["image"].shape == (3, 64, 80) and item["image"].dtype == torch.uint8
    torch.testing.assert_close(item["boxes"], torch.tensor([[2.0, 5, 30, 45], [50, 4, 70, 24]]))
    assert item["labels"].tolist() == [0, 0] and item["image_id"] == 0 and item["orig_size"] == (64, 80)
    assert dataset[1]["boxes"].shape == (0, 4)
    # Full-body targets are clipped to the image by the training transform; keys carry the seed.
    train = CrowdHumanDetection(images, odgt, TrainTransform((32,), 64, 0.0), box="fbox", max_images=1)
    sample = train[(0, (3, 0))]
    assert len(train) == 1 and sample["image"].shape == (3, 32, 40)
    torch.testing.assert_close(sample["boxes"], torch.tensor([[0.0, 2.5, 15, 32], [25, 2, 35, 17]]))


def test_image_sizes_follow_the_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 80 x 64, shown 64 x 80
    Image.new("RGB", (80, 64)).save(tmp_path / "a.jpg", exif=exif)
    (tmp_path / "a.odgt").write_text(json.dumps({"ID": "a", "gtboxes": []}) + "\n")
    dataset = CrowdHumanDetection(tmp_path, tmp_path / "a.odgt")
    assert (dataset.records[0].height, dataset.records[0].width) == (80, 64)
    assert dataset[0]["image"].shape == (3, 80, 64)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"ID": "x", "gtboxes": [}', r"a\.odgt:2: not valid JSON"),
        ('["x"]', r"a\.odgt:2: expected a JSON object with a string 'ID'"),
        ('{"ID": "x", "gtboxes": {}}', r"a\.odgt:2: 'gtboxes' must be a list"),
        ('{"ID": "x", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3, 4]}]}', r"a\.odgt:2: .*'vbox' must"),
        (json.dumps(LINES[0]), r"a\.odgt:2: ID '273271,c9db000d5146c15' already on line 1"),
    ],
)
def test_a_bad_line_names_the_file_and_line(tmp_path, line, message):
    (tmp_path / "a.odgt").write_text(json.dumps(LINES[0]) + "\n" + line + "\n")
    with pytest.raises(BadAnnotationError, match=message) as info:
        read_odgt(tmp_path / "a.odgt")
    assert "\n" not in str(info.value)


def test_a_missing_image_is_named_or_skipped(crowd):
    odgt, images = crowd
    (images / f"{LINES[1]['ID']}.jpg").unlink()
    with pytest.raises(BadImageError, match=r"284193,faa9000f2678b5e\.jpg.*annotation_val\.odgt:2"):
        CrowdHumanDetection(images, odgt)
    with pytest.warns(UserWarning, match="skipping bad image"):
        dataset = CrowdHumanDetection(images, odgt, skip_bad=True)
    assert [r.name for r in dataset.records] == [LINES[0]["ID"]]
    with pytest.raises(FileNotFoundError, match=r"nope\.odgt"):
        CrowdHumanDetection(images, odgt.parent / "nope.odgt")


def test_the_dataset_kind_follows_the_suffix_or_the_config(crowd, tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")
    odgt, images = crowd
    assert isinstance(detection_dataset(images, odgt), CrowdHumanDetection)
    renamed = tmp_path / "val.txt"
    renamed.write_text(odgt.read_text())
    explicit = detection_dataset(images, renamed, annotation_format="odgt", crowdhuman_box="fbox")
    assert isinstance(explicit, CrowdHumanDetection) and explicit.box == "fbox"
    coco = tmp_path / "coco.json"
    image = {"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}
    categories = [{"id": 1, "name": "p"}]
    coco.write_text(json.dumps({"images": [image], "annotations": [], "categories": categories}))
    assert type(detection_dataset(images, coco)) is CocoDetection
    with pytest.raises(ValueError, match=r"data\.annotation_format must be one of"):
        detection_dataset(images, odgt, annotation_format="lvis2")
    with pytest.raises(ValueError, match=r"data\.crowdhuman_box must be one of"):
        detection_dataset(images, odgt, crowdhuman_box="xbox")
