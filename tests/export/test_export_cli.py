"""``diffdet export`` on the command line: writes the file and says so; a bad option is one stderr
line and exit status 2."""

from __future__ import annotations

import pytest
import torch

import diffdet
from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main
from diffdet.config import load_config
from diffdet.modeling import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(one_thread, tmp_path_factory):
    """A checkpoint of the quickstart preset's detector (random weights; trainable BatchNorm, which
    the export keeps as it is, unlike FrozenBatchNorm, which it folds)."""
    torch.manual_seed(0)
    cfg = load_config("quickstart").model
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "quickstart.pth", build_detector(cfg), cfg)


def test_export_writes_the_file_with_the_options_asked(weights, tmp_path, capsys):
    out = tmp_path / "tiny.pt2"
    argv = ["export", "--weights", str(weights), "--out", str(out), "--size", "48x80", "--boxes", "8"]
    assert main([*argv, "--steps", "2", "--batch", "2", "--max-detections", "10", "--dtype", "fp16"]) == 0
    assert f"wrote {out}: pt2, 2 x 48x80 uint8, 8 boxes x 2 step(s), fp16" in capsys.readouterr().out
    meta = diffdet.export.read_metadata(out)
    assert (meta["height"], meta["width"], meta["num_boxes"], meta["steps"]) == (48, 80, 8, 2)
    assert (meta["batch"], meta["max_detections"], meta["dtype"]) == (2, 10, "fp16")
    images = torch.zeros((2, 3, 48, 80), dtype=torch.uint8)
    with torch.no_grad():
        boxes, scores, labels, count = torch.export.load(str(out)).module()(images, torch.randn(3, 2, 8, 4))
    assert boxes.shape == (2, 10, 4) and boxes.dtype == scores.dtype == torch.float32
    assert labels.dtype == count.dtype == torch.int64 and count.shape == (2,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--out", "{tmp}/x.onnx", "--steps", "0"], "steps must be in [1, 1000], got 0"),
        (["--out", "{tmp}/x.tflite"], "cannot tell the format from the suffix"),
        (["--out", "{tmp}/x.onnx", "--opset", "11"], "opset must be an integer >= 18, got 11"),
        (["--out", "{tmp}/missing/x.onnx"], "does not exist"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(weights, tmp_path, capsys, options, message):
    argv = ["export", "--weights", str(weights), *(o.format(tmp=tmp_path) for o in options)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffdet export: error: ") and message in err


def test_a_failed_export_leaves_an_earlier_file_and_no_scratch(weights, tmp_path, capsys):
    earlier = tmp_path / "x.onnx"
    earlier.write_bytes(b"an earlier export")
    assert main(["export", "--weights", str(weights), "--out", str(earlier), "--opset", "11"]) == 2
    assert earlier.read_bytes() == b"an earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx"]  # the weights live in another folder


def test_an_exported_file_is_not_exported_again(weights, tmp_path, capsys):
    (tmp_path / "y.onnx").write_bytes(b"")
    assert main(["export", "--weights", str(tmp_path / "y.onnx"), "--out", str(tmp_path / "z.onnx")]) == 2
    assert "is an exported file already" in capsys.readouterr().err
