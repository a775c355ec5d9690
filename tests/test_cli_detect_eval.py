"""``diffdet detect`` and ``diffdet eval`` on coco128 images with a tiny random-weight detector."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main
from diffdet.inference.images import image_ids, list_images
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128"
ANNOTATIONS = COCO128 / "annotations" / "instances_train2017.json"
needs_coco128 = pytest.mark.skipif(not ANNOTATIONS.is_file(), reason=f"coco128 not found at {COCO128}")
needs_pycocotools = pytest.mark.skipif(
    importlib.util.find_spec("pycocotools") is None, reason="pycocotools is not installed"
)

TINY = dict(
    backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
    num_proposals=10, min_size_test=64, max_size_test=96,
)  # fmt: skip
"""A detector small enough for a 2-core CPU (80 COCO classes, so its category ids are COCO's)."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pth", build_detector(cfg), cfg)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def two_images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("000000000009.jpg", "000000000025.jpg"):
        shutil.copy(COCO128 / "train2017" / name, folder / name)
    return folder


@needs_coco128
@needs_pycocotools
def test_detect_writes_annotated_images_and_coco_results(weights, two_images, tmp_path):
    out = tmp_path / "out"
    status, stdout, _ = run_cli(
        "detect", str(two_images), "--weights", str(weights), "--score-thr", "0", "--steps", "2",
        "--device", "cpu", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert status == 0, stdout
    for name in ("000000000009.jpg", "000000000025.jpg"):
        with Image.open(two_images / name) as original, Image.open(out / name) as drawn:
            assert drawn.size == original.size
    results = json.loads((out / "detections.json").read_text())
    assert results, "a random detector at score-thr 0 still returns boxes"
    assert {r["image_id"] for r in results} == {9, 25}
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"} and len(r["bbox"]) == 4
        assert 0.0 <= r["score"] <= 1.0 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
    from pycocotools.coco import COCO

    gt = COCO(str(ANNOTATIONS))
    detections = gt.loadRes(str(out / "detections.json"))  # pycocotools checks ids and categories
    assert len(detections.anns) == len(results)


@needs_coco128
@pytest.mark.parametrize("command", ["detect", "eval"])
def test_dtype_bf16_runs_a_bf16_detector(weights, two_images, tmp_path, monkeypatch, command):
    """``--dtype bf16`` loads the weights in bfloat16 (boxes and scores come out float32)."""
    import diffdet.cli.detect
    import diffdet.cli.eval

    seen = []
    module, runner = (
        (diffdet.cli.detect, "run_detect") if command == "detect" else (diffdet.cli.eval, "run_eval")
    )
    original = getattr(module, runner)

    def spy(model, *args, **kwargs):
        seen.append(model.head.time_mlp[1].weight.dtype)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(module, runner, spy)
    source = [str(two_images)] if command == "detect" else ["--data", str(ANNOTATIONS), "--max-images", "1"]
    out = ["--out", str(tmp_path / "out")] if command == "detect" else []
    status, stdout, stderr = run_cli(
        command, *source, "--weights", str(weights), "--dtype", "bf16", "--steps", "1", "--device", "cpu",
        *out, "--no-progress",
    )  # fmt: skip
    assert status == 0, stdout + stderr
    assert seen == [torch.bfloat16]


@needs_coco128
def test_detect_score_threshold_filters(weights, two_images, tmp_path):
    status, _, _ = run_cli(
        "detect", str(two_images / "000000000009.jpg"), "--weights", str(weights), "--score-thr", "1.0",
        "--device", "cpu", "--out", str(tmp_path / "out"), "--no-progress",
    )  # fmt: skip
    assert status == 0
    assert json.loads((tmp_path / "out" / "detections.json").read_text()) == []


@needs_coco128
@needs_pycocotools
def test_eval_prints_ap_table_and_writes_results(weights, tmp_path):
    results = tmp_path / "results.json"
    status, stdout, _ = run_cli(
        "eval", "--data", str(ANNOTATIONS), "--weights", str(weights), "--max-images", "2", "--device", "cpu",
        "--results", str(results), "--no-progress",
    )  # fmt: skip
    assert status == 0
    header, values = stdout.strip().splitlines()[-2:]
    assert header.split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert all(float(v) == -1 or 0.0 <= float(v) <= 100.0 for v in values.split())
    from pycocotools.coco import COCO

    COCO(str(ANNOTATIONS)).loadRes(str(results))


@needs_coco128
def test_detect_reports_an_unreadable_image(weights, two_images, tmp_path):
    (two_images / "broken.jpg").write_bytes(b"not a jpeg")
    status, _, stderr = run_cli(
        "detect", str(two_images), "--weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "o"),
        "--no-progress",
    )  # fmt: skip
    assert status == 2
    assert "broken.jpg" in stderr and "Traceback" not in stderr


@needs_coco128
@needs_pycocotools
def test_eval_rejects_weights_for_other_categories(tmp_path):
    cfg = ModelConfig(**{**TINY, "num_classes": 4})
    path = save_checkpoint(tmp_path / "four.pth", build_detector(cfg), cfg)
    status, _, stderr = run_cli("eval", "--data", str(ANNOTATIONS), "--weights", str(path), "--device", "cpu")
    assert status == 2 and "categories" in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["detect", "{tmp}/missing", "--weights", "{weights}"], "no such file or folder"),
        (["detect", "{tmp}", "--weights", "{weights}"], "holds no image"),
        (["detect", "{img}", "--weights", "{tmp}/none.pth"], "--weights"),
        (["eval", "--data", "{tmp}/none.json", "--weights", "{weights}"], "annotation file"),
    ],
    ids=["missing-input", "empty-folder", "missing-weights", "missing-annotations"],
)
def test_clear_errors_for_unusable_inputs(weights, tmp_path, argv, message):
    image = tmp_path / "img" / "x.png"
    image.parent.mkdir()
    Image.new("RGB", (8, 8)).save(image)
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path / "empty", img=image, weights=weights) for a in argv]
    status, _, stderr = run_cli(*argv, "--device", "cpu")
    assert status == 2
    assert message in stderr and "Traceback" not in stderr


def test_image_ids_follow_coco_file_names(tmp_path):
    coco = [tmp_path / "000000000009.jpg", tmp_path / "000000000025.png"]
    assert image_ids(coco) == [9, 25]
    assert image_ids([tmp_path / "cat.jpg", tmp_path / "7.jpg"]) == [0, 1]
    assert image_ids([tmp_path / "07.jpg", tmp_path / "7.png"]) == [0, 1]  # duplicate numbers


def test_list_images_sorts_and_filters(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert list_images(tmp_path / "a.jpg") == [tmp_path / "a.jpg"]
