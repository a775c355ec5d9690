"""``diffdet eval`` on an exported file gives the PyTorch model's detections and AP, in ONNX Runtime and
OpenVINO: same weights, same ``--seed``, a synthetic-shapes validation set of one image size (the
export size, so the graph sees the images the model sees).

Every PyTorch detection with score >= 0.05 must have one in the runtime's results with the same label,
IoU >= 0.99 and a score within 1e-3, and the AP must agree to 3 decimals.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main
from diffdet.data.synthetic import CLASSES, SyntheticSpec, generate
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading and AP)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (ONNX export)")

SIZE = 64
BOXES, STEPS = 20, 2
MIN_SCORE, MIN_IOU, SCORE_TOL = 0.05, 0.99, 1e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Synthetic validation images of one size, a tame random detector's checkpoint and its ONNX file."""
    import diffdet.export

    root = tmp_path_factory.mktemp("same")
    spec = SyntheticSpec(num_train=1, num_val=6, min_image_size=SIZE, max_image_size=SIZE, seed=2)
    data = generate(root / "data", spec)
    cfg = ModelConfig(
        backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
        num_proposals=BOXES, sample_steps=STEPS, min_size_test=SIZE, max_size_test=SIZE,
        num_classes=len(CLASSES), class_names=CLASSES, category_ids=tuple(range(1, len(CLASSES) + 1)),
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with (
        torch.no_grad()
    ):  # scores well above 0.05, boxes near their random starts (random deltas collapse them)
        model.head.head_series[-1].class_logits.bias.fill_(-1.0)
        for stage in model.head.head_series:
            stage.bboxes_delta.weight.mul_(0.01)
            stage.bboxes_delta.bias.zero_()
    weights = save_checkpoint(root / "tame.pth", model, cfg)
    onnx_file = root / "tame.onnx"
    diffdet.export(model, onnx_file, size=(SIZE, SIZE), num_boxes=BOXES, steps=STEPS)
    return {**data, "weights": weights, "onnx": onnx_file, "root": root}


def evaluate(setup: dict[str, Path], weights: Path, name: str, *extra: str) -> tuple[list[dict], dict]:
    """``diffdet eval --results``: (detections, metrics)."""
    results, metrics = setup["root"] / f"{name}.json", setup["root"] / f"{name}_metrics.json"
    argv = [
        "eval", "--data", str(setup["val_annotations"]), "--images", str(setup["val_images"]),
        "--weights", str(weights), "--seed", "3", "--device", "cpu", "--no-progress",
        "--results", str(results), "--metrics-out", str(metrics), *extra,
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(argv)
    assert status == 0, out.getvalue() + err.getvalue()
    return json.loads(results.read_text()), json.loads(metrics.read_text())


def iou_xywh(a: list[float], b: list[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def unmatched(reference: list[dict], candidates: list[dict]) -> list[dict]:
    """Reference detections (score >= MIN_SCORE) with no candidate of the same image and label at IoU >=
    MIN_IOU and a score within SCORE_TOL."""
    missing = []
    for r in (r for r in reference if r["score"] >= MIN_SCORE):
        if not any(
            c["image_id"] == r["image_id"] and c["category_id"] == r["category_id"]
            and abs(c["score"] - r["score"]) <= SCORE_TOL and iou_xywh(c["bbox"], r["bbox"]) >= MIN_IOU
            for c in candidates
        ):  # fmt: skip
            missing.append(r)
    return missing


@pytest.fixture(scope="module")
def torch_run(setup) -> tuple[list[dict], dict]:
    return evaluate(setup, setup["weights"], "torch")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_file_gives_the_pytorch_models_detections_and_ap(setup, torch_run, runtime, monkeypatch):
    import diffdet.export.runtime as exported_runtime

    opened = []
    real_open = exported_runtime.open_engine

    def spy(path, name, *rest):
        opened.append(name)
        return real_open(path, name, *rest)

    monkeypatch.setattr(exported_runtime, "open_engine", spy)
    torch_dets, torch_metrics = torch_run
    dets, metrics = evaluate(setup, setup["onnx"], runtime, "--runtime", runtime)
    assert opened == [runtime]  # --runtime reached the engine
    assert sum(r["score"] >= MIN_SCORE for r in torch_dets) >= 10  # the comparison below is not empty
    assert unmatched(torch_dets, dets) == []
    for name, value in torch_metrics.items():
        assert round(metrics[name], 3) == round(value, 3), name


def test_knobs_other_than_the_exported_ones_are_refused_in_one_line(setup, capsys):
    argv = [
        "eval", "--data", str(setup["val_annotations"]), "--images", str(setup["val_images"]),
        "--weights", str(setup["onnx"]), "--boxes", "10", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--boxes 10" in err and f"num_boxes={BOXES}" in err
