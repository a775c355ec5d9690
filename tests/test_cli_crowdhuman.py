"""``diffdet eval`` on CrowdHuman odgt data (made from coco128 images) with tiny random-weight detectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli_detect_eval import TINY, run_cli

from diffdet.checkpoint import save_checkpoint
from diffdet.data.crowdhuman import CrowdHumanDetection
from diffdet.evaluation import build_evaluator, inference_on_dataset
from diffdet.evaluation.crowdhuman import ImageBoxes, crowdhuman_metrics, keep_class
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only spin on a shared CPU


def _weights(path, **overrides):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, **overrides})
    return save_checkpoint(path, build_detector(cfg), cfg)


@pytest.fixture(scope="module")
def person_weights(tmp_path_factory):
    """A one-class CrowdHuman-style detector."""
    path = tmp_path_factory.mktemp("weights") / "person.pth"
    return _weights(path, num_classes=1, class_names=("person",), category_ids=(1,))


@pytest.fixture(scope="module")
def coco_weights(tmp_path_factory):
    return _weights(tmp_path_factory.mktemp("weights") / "coco.pth")


def _eval(data, weights, *extra):
    return run_cli(
        "eval", "--data", str(data["odgt"]), "--images", str(data["images"]), "--weights", str(weights),
        "--device", "cpu", "--no-progress", *extra,
    )  # fmt: skip


def _rescore(dataset: CrowdHumanDetection, results_file) -> dict[str, float]:
    """The metrics of a written CrowdHuman results file, through crowdhuman_metrics directly."""
    lines = [json.loads(line) for line in results_file.read_text().splitlines()]
    assert [line["ID"] for line in lines] == [r.name for r in dataset.records]
    images = []
    for record, line in zip(dataset.records, lines, strict=True):
        assert (line["height"], line["width"]) == (record.height, record.width)
        dt = np.array([d["box"] + [d["score"]] for d in line["dtboxes"]]).reshape(-1, 5)
        assert all(d["tag"] == 1 for d in line["dtboxes"])
        dt[:, 2:4] += dt[:, :2]
        gt = np.concatenate([record.boxes, record.ignore_boxes])
        flags = np.r_[np.zeros(len(record.boxes), bool), np.ones(len(record.ignore_boxes), bool)]
        images.append(ImageBoxes(gt, flags, dt[:, :4], dt[:, 4], record.height, record.width))
    return crowdhuman_metrics(images)


def test_eval_of_a_one_class_model_prints_and_writes_the_metrics(coco128_odgt, person_weights, tmp_path):
    results, metrics_file = tmp_path / "dt.odgt", tmp_path / "metrics.json"
    status, stdout, stderr = _eval(
        coco128_odgt,
        person_weights,
        "--steps",
        "1",
        "--results",
        str(results),
        "--metrics-out",
        str(metrics_file),
    )
    assert status == 0, stderr
    assert "CrowdHuman (vbox) over 4 image(s)" in stdout and "class 'person'" in stdout
    header, row = stdout.strip().splitlines()[-2:]
    assert header.split() == ["boxes", "steps", "AP50", "mMR", "recall", "JI"]
    (metrics,) = json.loads(metrics_file.read_text())
    assert row.split()[:2] == ["10", "1"] and (metrics["boxes"], metrics["steps"]) == (10, 1)
    for name, printed in zip(("AP50", "mMR", "recall", "JI"), row.split()[2:], strict=True):
        assert 0.0 <= metrics[name] <= 1.0 and float(printed) == pytest.approx(100 * metrics[name], abs=0.006)
    # The detections written in the toolkit's format score exactly what was printed.
    dataset = CrowdHumanDetection(coco128_odgt["images"], coco128_odgt["odgt"])
    rescored = _rescore(dataset, results)
    assert rescored == pytest.approx({k: metrics[k] for k in rescored}, abs=1e-6)


def test_a_coco_model_is_scored_on_its_person_class_over_a_sweep(coco128_odgt, coco_weights, tmp_path):
    results = tmp_path / "dt.odgt"
    status, stdout, stderr = _eval(
        coco128_odgt, coco_weights, "--class", "person", "--boxes", "5,10", "--steps", "1,2",
        "--crowdhuman-box", "fbox", "--results", str(results), "--max-images", "2",
    )  # fmt: skip
    assert status == 0, stderr
    assert "CrowdHuman (fbox) over 2 image(s)" in stdout
    rows = [line.split()[:2] for line in stdout.strip().splitlines()[-4:]]
    assert rows == [["5", "1"], ["5", "2"], ["10", "1"], ["10", "2"]]
    for boxes, steps in rows:
        lines = (tmp_path / f"dt_boxes{boxes}_steps{steps}.odgt").read_text().splitlines()
        assert len(lines) == 2
        # 1 step keeps at most one detection per box; the person class alone is a subset of them.
        if steps == "1":
            assert all(len(json.loads(line)["dtboxes"]) <= int(boxes) for line in lines)


def test_one_class_keeps_only_the_chosen_label():
    class Fixed(torch.nn.Module):
        def forward(self, images, **kwargs):
            return [{"boxes": torch.arange(12.0).view(3, 4), "scores": torch.tensor([0.9, 0.8, 0.7]),
                     "labels": torch.tensor([0, 3, 0])}]  # fmt: skip

    (out,) = [keep_class(output, 3) for output in Fixed()([torch.zeros(3, 4, 4)])]
    assert out["labels"].tolist() == [0] and out["scores"].tolist() == [pytest.approx(0.8)]
    assert out["boxes"].tolist() == [[4.0, 5.0, 6.0, 7.0]]


class Oracle(torch.nn.Module):
    """Returns the person boxes of each image (found by its size) with decreasing scores."""

    def __init__(self, dataset: CrowdHumanDetection) -> None:
        super().__init__()
        self.by_size = {(r.height, r.width): r for r in dataset.records}

    def forward(self, images):
        outs = []
        for image in images:
            boxes = torch.from_numpy(self.by_size[tuple(image.shape[1:])].boxes).float()
            scores = torch.linspace(1.0, 0.5, len(boxes))
            outs.append(
                {"boxes": boxes, "scores": scores, "labels": torch.zeros(len(boxes), dtype=torch.long)}
            )
        return outs


def test_perfect_detections_through_evaluate(coco128_odgt):
    dataset = CrowdHumanDetection(coco128_odgt["images"], coco128_odgt["odgt"])
    assert len({(r.height, r.width) for r in dataset.records}) == len(dataset)  # the oracle's lookup
    num_persons = sum(len(r.boxes) for r in dataset.records)
    assert sum(len(r.ignore_boxes) for r in dataset.records) == 3  # coco128's crowd persons
    metrics = inference_on_dataset(Oracle(dataset), dataset, build_evaluator(dataset), batch_size=2)
    assert metrics["recall"] == 1.0 and metrics["mMR"] == 0.0
    assert metrics["AP50"] == pytest.approx(1 - 1 / num_persons)  # the toolkit's curve starts at 1/G
    assert metrics["JI"] == pytest.approx(1.0, abs=1e-5)


def test_eval_errors_are_one_line_and_name_the_input(coco128_odgt, coco_weights, person_weights, tmp_path):
    status, _, stderr = _eval(coco128_odgt, coco_weights)
    assert status == 2 and "--class NAME" in stderr
    status, _, stderr = _eval(coco128_odgt, coco_weights, "--class", "unicorn")
    assert status == 2 and "no such class" in stderr

    bad = tmp_path / "bad.odgt"
    lines = coco128_odgt["odgt"].read_text().splitlines()
    bad.write_text(lines[0] + "\n" + lines[1][:-5] + "\n")
    data = {**coco128_odgt, "odgt": bad}
    status, _, stderr = _eval(data, person_weights)
    assert status == 2 and f"{bad}:2: not valid JSON" in stderr and len(stderr.strip().splitlines()) == 1

    missing = tmp_path / "missing.odgt"
    missing.write_text(lines[0] + "\n" + json.dumps({"ID": "nobody", "gtboxes": []}) + "\n")
    status, _, stderr = _eval({**coco128_odgt, "odgt": missing}, person_weights)
    assert status == 2 and "nobody.jpg" in stderr and f"{missing}:2" in stderr
    assert len(stderr.strip().splitlines()) == 1

    coco = coco128_odgt["images"].parent / "instances.json"
    image = {"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}
    coco.write_text(json.dumps({"images": [image], "annotations": [], "categories": [{"id": 1}]}))
    status, _, stderr = run_cli(
        "eval", "--data", str(coco), "--weights", str(person_weights), "--class", "person"
    )
    assert status == 2 and "--class applies to CrowdHuman" in stderr
    status, _, stderr = run_cli(
        "eval",
        "--data",
        str(coco),
        "--images",
        str(tmp_path),
        "--weights",
        str(person_weights),
        "--boxes",
        "5,9",
    )
    assert status == 2 and "--boxes takes one value here" in stderr


def test_no_eval_option_is_a_prefix_of_another():
    """argparse resolves abbreviations: an option that prefixes another could never be abbreviated."""
    import argparse

    from diffdet.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = [
        o for action in sub.choices["eval"]._actions for o in action.option_strings if o.startswith("--")
    ]
    assert {"--class", "--crowdhuman-box", "--metrics-out", "--boxes", "--steps"} <= set(options)
    # The --tta family (--tta, --tta-sizes...) is named by its issue; `--tta` itself matches exactly.
    clashes = [(a, b) for a in options for b in options if a != b and b.startswith(a) and a != "--tta"]
    assert not clashes
