"""``diffdet eval --tta`` and ``diffdet detect --tta`` on tiny synthetic images with a tiny random detector,
the refusal of bad ``--tta`` sizes, and the commands of docs/tta-video.md."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from diffdet.checkpoint import save_checkpoint
from diffdet.cli import build_parser, main
from diffdet.data.synthetic import CLASSES, SyntheticSpec, generate
from diffdet.modeling.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
    num_proposals=10, min_size_test=48, max_size_test=64, num_classes=len(CLASSES), class_names=CLASSES,
    category_ids=tuple(range(1, len(CLASSES) + 1)),
)  # fmt: skip
SMALL_TTA = ("--tta", "--tta-sizes", "32,48", "--tta-max-size", "96", "--steps", "1", "--device", "cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory, still_detector) -> Path:
    cfg = ModelConfig(**TINY)
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pth", still_detector(cfg), cfg)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")
    spec = SyntheticSpec(num_train=1, num_val=3, min_image_size=48, max_image_size=64, max_object_size=24)
    return generate(tmp_path_factory.mktemp("shapes"), spec)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("merge", "cap"), [("softvote", 10), ("nms", 100)])
def test_eval_with_tta_scores_the_merged_detections(weights, shapes, tmp_path, merge, cap, one_thread):
    results = tmp_path / "results.json"
    status, stdout, stderr = run_cli(
        "eval", "--data", str(shapes["val_annotations"]), "--images", str(shapes["val_images"]),
        "--weights", str(weights), "--tta-merge", merge, "--results", str(results), "--no-progress",
        *SMALL_TTA,
    )  # fmt: skip
    assert status == 0, stderr
    assert "AP50" in stdout
    detections = json.loads(results.read_text())
    assert detections, "the random detector's boxes survive the merge"
    per_image = [sum(d["image_id"] == i for d in detections) for i in (1, 2, 3)]
    assert max(per_image) <= cap  # soft vote keeps num_proposals (10), NMS keeps 100


def test_detect_with_tta_draws_the_merged_detections(weights, shapes, tmp_path, one_thread):
    out = tmp_path / "out"
    status, _, stderr = run_cli(
        "detect", str(shapes["val_images"]), "--weights", str(weights), "--score-thr", "0", "--out", str(out),
        "--tta-no-flip", "--no-progress", *SMALL_TTA,
    )  # fmt: skip
    assert status == 0, stderr
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        p.name for p in shapes["val_images"].glob("*.png")
    )
    assert json.loads((out / "detections.json").read_text())


@pytest.mark.parametrize(
    ("sizes", "message"), [("", "at least one"), ("0,48", "positive"), ("-8", "positive")]
)
def test_bad_tta_sizes_are_refused_in_one_line(weights, shapes, tmp_path, sizes, message):
    status, _, stderr = run_cli(
        "detect", str(shapes["val_images"]), "--weights", str(weights), "--tta", f"--tta-sizes={sizes}",
        "--out", str(tmp_path / "out"), "--no-progress",
    )  # fmt: skip
    assert status == 2 and stderr.count("\n") == 1 and "--tta-sizes" in stderr and message in stderr, stderr


def _doc_commands(program: str = "diffdet ") -> list[str]:
    text = (ROOT / "docs" / "tta-video.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith(program)
    ]


def test_every_diffdet_command_in_the_docs_parses():
    commands = _doc_commands()
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.command in ("detect", "eval"), command


def test_the_preset_choices_are_the_library_presets():
    from diffdet.cli.tta_options import PRESET_NAMES
    from diffdet.modeling.tta import PRESETS

    assert set(PRESET_NAMES) == set(PRESETS)


def test_every_benchmark_command_in_the_docs_parses():
    spec = importlib.util.spec_from_file_location("tta_effect", ROOT / "benchmarks" / "tta_effect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commands = _doc_commands("python benchmarks/tta_effect.py ")
    assert len(commands) >= 2
    for command in commands:
        args = module.build_parser().parse_args(shlex.split(command)[2:])
        assert set(args.settings.split(",")) <= set(module.SETTINGS), command
