"""Fixtures shared across the test folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run with one intra-op thread, then restore the previous count.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core CPU the threads' spinning
    costs seconds per iteration (10x seen on a loaded CI machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


COCO128 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128"


@pytest.fixture(scope="session")
def coco128_odgt(tmp_path_factory) -> dict[str, Path]:
    """A tiny CrowdHuman-format dataset made from the coco128 images with the most persons.

    Each COCO person box becomes a ``gtboxes`` entry: ``fbox`` the COCO box, ``vbox`` its upper three
    quarters, ``hbox`` a head-sized box at its top; crowd boxes become ``tag: "mask"`` ignore regions.
    Images are linked as ``Images/{ID}.jpg``. Returns ``{"odgt", "images", "ids"}``.
    """
    annotations = COCO128 / "annotations" / "instances_train2017.json"
    if not annotations.is_file():
        pytest.skip(f"coco128 not found at {COCO128}")
    data = json.loads(annotations.read_text())
    persons: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if ann["category_id"] == 1:
            persons.setdefault(ann["image_id"], []).append(ann)
    chosen = [257, 357, 149, 542]  # 12-14 persons each, sizes differ; 257, 357, 149 hold crowd boxes
    root = tmp_path_factory.mktemp("crowdhuman")
    (root / "Images").mkdir()
    files = {img["id"]: img["file_name"] for img in data["images"]}
    lines = []
    for image_id in chosen:
        name = Path(files[image_id]).stem
        (root / "Images" / f"{name}.jpg").symlink_to(COCO128 / "train2017" / files[image_id])
        boxes = []
        for ann in persons[image_id]:
            x, y, w, h = ann["bbox"]
            tag = "mask" if ann["iscrowd"] else "person"
            boxes.append({
                "tag": tag, "fbox": [x, y, w, h], "vbox": [x, y, w, 0.75 * h],
                "hbox": [x + w / 4, y, w / 2, h / 6], "extra": {"ignore": 0}, "head_attr": {"ignore": 0},
            })  # fmt: skip
        lines.append(json.dumps({"ID": name, "gtboxes": boxes}))
    odgt = root / "annotation_val.odgt"
    odgt.write_text("\n".join(lines) + "\n")
    return {"odgt": odgt, "images": root / "Images", "ids": [Path(files[i]).stem for i in chosen]}


@pytest.fixture(scope="session")
def still_detector():
    """Builds a seeded random detector (from a ``ModelConfig``) in eval mode whose boxes stay where the
    sampler put them (box deltas zero: inside the image, never a sliver) and whose scores sit around 0.5
    (the last stage's class bias zero): detections for the tests of what happens around the model."""
    from diffdet.modeling import build_detector

    def build(cfg):
        torch.manual_seed(0)
        model = build_detector(cfg).eval()
        with torch.no_grad():
            model.head.head_series[-1].class_logits.bias.fill_(0.0)
            for stage in model.head.head_series:
                stage.bboxes_delta.weight.zero_()
                stage.bboxes_delta.bias.zero_()
        return model

    return build
