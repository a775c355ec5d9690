"""The end-to-end benchmark: timing helpers, the staged (timed) detection, the grid, plots, the command
and the GPU suite's CPU dry run, all at tiny sizes."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdet.bench.grid import published_comparison, run_grid, synthetic_images
from diffdet.bench.pipeline import check_modes, folded_copy, published_copy, staged_detect
from diffdet.bench.plot import Series, VLine, line_chart, nice_ticks
from diffdet.bench.settings import GridSettings
from diffdet.bench.timing import Clock, percentile, summarize, time_calls
from diffdet.cli import main
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
    num_proposals=8, min_size_test=64, max_size_test=96,
)  # fmt: skip
OVERRIDES = [f"model.{k}={v}" for k, v in TINY.items() if k not in ("min_size_test", "max_size_test")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(ModelConfig(**TINY)).eval()


def test_percentile_matches_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 25, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    stats = summarize(values)
    assert stats["median_ms"] == pytest.approx(3.5) and stats["min_ms"] == 1.0 and stats["iters"] == 6
    with pytest.raises(ValueError, match="values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q"):
        percentile([1.0], 101)


def test_time_calls_runs_warmup_then_times_each_call():
    calls = []
    times = time_calls(lambda: calls.append(1), Clock("cpu"), warmup=2, iters=3)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
    with pytest.raises(ValueError, match="iters"):
        time_calls(lambda: None, Clock("cpu"), warmup=0, iters=0)


def test_staged_detect_equals_model_call_and_parts_add_up(model):
    images = synthetic_images(2, (40, 56), seed=1, device=torch.device("cpu"))
    detections, parts = staged_detect(model, images, num_boxes=6, steps=2, seed=3, clock=Clock("cpu"))
    expected = model(images, num_boxes=6, steps=2, seed=3)
    for got, want in zip(detections, expected, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    names = ["preprocess", "backbone+fpn", "head step 1", "head step 2", "sampler", "nms+postprocess"]
    assert list(parts) == [*names, "total"]
    assert sum(parts[n] for n in names) == pytest.approx(parts["total"], rel=1e-6)


def test_folded_copy_is_fused_and_cast_and_published_copy_is_not(model):
    fast = folded_copy(model, torch.bfloat16)
    assert fast.head.time_mlp[1].weight.dtype == torch.bfloat16
    assert fast.alphas_cumprod.dtype == torch.float64  # the schedule stays float64
    conv = fast.backbone.bottom_up.stem.conv1
    assert fast.inference_fusion and conv._folded is not None and conv._folded[1].dtype == torch.bfloat16
    assert list(fast.state_dict()) == list(model.state_dict())  # reference layout kept
    published = published_copy(model)
    assert not published.inference_fusion and not published.backbone.bottom_up.stem.conv1.fold_at_inference
    assert model.head.time_mlp[1].weight.dtype == torch.float32 and model.inference_fusion  # untouched


def test_graph_modes_need_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        check_modes(["graph"], torch.device("cpu"))
    with pytest.raises(ValueError, match="modes"):
        check_modes(["int8"], torch.device("cpu"))


def test_grid_records_every_point_beside_the_baselines(model):
    baselines = ("reference", "published")
    settings = GridSettings(boxes=[4], steps=[1, 2], size=(32, 48), warmup=0, iters=1, baselines=baselines)
    settings.ap_fn = lambda m, p, s: {"AP": p / 100 + s / 1000}
    records = run_grid(model, settings)
    assert [(r["num_boxes"], r["steps"], r["backend"]) for r in records] == [
        (4, s, b) for s in (1, 2) for b in (*baselines, "fast")
    ]
    for ref, pub, fast in zip(records[::3], records[1::3], records[2::3], strict=True):
        for name, base in (("reference", ref), ("published", pub)):
            assert fast[f"speedup_vs_{name}"] == pytest.approx(base["median_ms"] / fast["median_ms"])
            same = fast[f"vs_{name}"]
            assert same["same_count"] and same["same_labels"]
            assert same["max_box_diff"] < 1e-2 and same["matched"] == 1.0
        assert fast["fps"] == pytest.approx(1e3 / fast["median_ms"])
        assert fast["p90_ms"] >= fast["median_ms"] > 0 and fast["iters"] == 1
        assert fast["ap"]["AP"] == pytest.approx(fast["num_boxes"] / 100 + fast["steps"] / 1000)
        assert len([k for k in fast["components_ms"] if k.startswith("head step")]) == fast["steps"]
    with pytest.raises(ValueError, match="baselines"):
        GridSettings(baselines=["torchvision"])


def test_runs_are_timed_in_turn_after_their_warmup():
    from diffdet.bench.grid import _measure

    log = []

    def fake(name, ms):
        def run():
            log.append(name)
            return [name], {"total": ms, "part": ms / 2}

        return run

    out = _measure({"ref": fake("ref", 4.0), "fast": fake("fast", 2.0)}, warmup=1, iters=2)
    assert log == ["ref", "fast", "ref", "fast", "ref", "fast"]
    assert out["fast"][0] == ["fast"] and out["fast"][1]["median_ms"] == 2.0
    assert out["ref"][2] == {"total": 4.0, "part": 2.0}


def test_nice_ticks_cover_the_range():
    ticks = nice_ticks(0.0, 37.0)
    assert ticks[0] <= 0.0 and ticks[-1] >= 37.0 and 4 <= len(ticks) <= 9
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert steps == {10.0}
    assert nice_ticks(3.0, 3.0)[0] < 3.0 < nice_ticks(3.0, 3.0)[-1]


def test_line_chart_writes_a_png(tmp_path):
    series = [Series("a", [(100, 5.0), (300, 3.0)], ["1", "2"]), Series("b", [(100, 2.0)], marker="^")]
    path = line_chart(series, tmp_path / "sub" / "p.png", title="t", xlabel="x", ylabel="y", log_x=True,
                      vlines=[VLine(200, "published")])  # fmt: skip
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (960, 600)
        assert len(image.getcolors(1 << 16)) > 10  # more than a blank canvas
    with pytest.raises(ValueError, match="marker"):
        line_chart([Series("c", [(1, 1.0)], marker="x")], tmp_path / "q.png", title="", xlabel="", ylabel="")
    with pytest.raises(ValueError, match="log_x"):
        line_chart([Series("c", [(0, 1.0)])], tmp_path / "q.png", title="", xlabel="", ylabel="", log_x=True)


def test_bench_command_writes_table_json_and_plot(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            ["bench", *OVERRIDES, "--device", "cpu", "--size", "48x64", "--boxes", "4,300", "--steps", "1",
             "--modes", "fp32", "--warmup", "0", "--iters", "1", "--out", str(tmp_path), "--name", "tiny"]
        )  # fmt: skip
    assert status == 0
    table = out.getvalue()
    assert "published: 30 FPS on one NVIDIA A100" in table and "ours:" in table
    payload = json.loads((tmp_path / "tiny.json").read_text())
    assert payload["meta"]["size"] == [48, 64] and payload["meta"]["backbone"] == "R18"
    assert len(payload["records"]) == 4
    assert payload["published_comparison"]["ours"]["num_boxes"] == 300
    with Image.open(tmp_path / "tiny.png") as image:
        assert image.format == "PNG"


def test_bench_on_cpu_puts_fp32_and_bf16_beside_the_baseline_at_every_batch(tmp_path):
    """The CPU default modes (fp32, bf16), a batch list, the ISA in the title and the JSON, and bf16's
    match against fp32 (IoU 0.9, same label) in its record and the table."""
    from diffdet.hardware import cpu_isa

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            ["bench", *OVERRIDES, "--device", "cpu", "--size", "48x64", "--boxes", "4", "--steps", "1",
             "--batch", "1,2", "--baselines", "published", "--warmup", "0", "--iters", "1", "--out",
             str(tmp_path), "--name", "cpu"]
        )  # fmt: skip
    assert status == 0
    payload = json.loads((tmp_path / "cpu.json").read_text())
    assert payload["meta"]["isa"] == cpu_isa() and f"ISA {cpu_isa()}" in out.getvalue()
    assert "fp32 dets @IoU.9" in out.getvalue()
    records = payload["records"]
    assert [(r["batch"], r["mode"], r["backend"]) for r in records] == [
        (b, m, k) for b in (1, 2) for m, k in (("fp32", "published"), ("fp32", "fast"), ("bf16", "fast"))
    ]
    for r in records:
        assert r["fps"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
        assert ("vs_fp32" in r) == (r["mode"] == "bf16")
        if r["mode"] == "bf16":
            assert 0.0 <= r["vs_fp32"]["matched"] <= 1.0
    # The published figure (batch 1) is compared with our batch-1 figure, not a faster batch-4 one.
    fast = [
        {"backend": "fast", "num_boxes": 300, "steps": 1, "batch": b, "fps": f}
        for b, f in ((1, 2.0), (4, 5.0))
    ]
    assert published_comparison(fast)["ours"]["batch"] == 1


def test_bench_command_rejects_bad_arguments(tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["bench", "--device", "cpu", "--modes", "graph", *OVERRIDES]) == 2
        assert main(["bench", "--device", "cpu", "--data", "x.json", *OVERRIDES]) == 2
        assert main(["bench", "--device", "cpu", "--dtype", "bf16", "--modes", "fp32", *OVERRIDES]) == 2
    assert "CUDA" in err.getvalue() and "--data needs --weights" in err.getvalue()
    assert "--dtype or --modes" in err.getvalue()


COCO128 = ROOT.parent / "shared" / "data" / "coco128" / "annotations" / "instances_train2017.json"


@pytest.mark.skipif(not COCO128.is_file(), reason="coco128 not found beside the repository")
def test_bench_with_data_measures_ap_and_draws_the_speed_accuracy_plot(tmp_path):
    from diffdet.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    weights = save_checkpoint(tmp_path / "tiny.pth", build_detector(cfg), cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(
            ["bench", "--weights", str(weights), "--device", "cpu", "--size", "64x96", "--boxes", "4",
             "--steps", "1,2", "--warmup", "0", "--iters", "1", "--baselines", "",
             "--data", str(COCO128), "--max-images", "1", "--out", str(tmp_path), "--name", "acc"]
        )  # fmt: skip
    assert status == 0
    records = json.loads((tmp_path / "acc.json").read_text())["records"]
    assert [(r["steps"], r["mode"]) for r in records] == [(1, "fp32"), (1, "bf16"), (2, "fp32"), (2, "bf16")]
    assert all(set(r["ap"]) >= {"AP", "AP50"} for r in records)
    with Image.open(tmp_path / "acc_ap.png") as image:
        assert image.format == "PNG"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_names_the_checkout_and_marks_uncommitted_source_changes(tmp_path):
    """A rewritten results file leaves the commit clean; an edited source file makes it -dirty."""
    from diffdet.bench.report import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    assert git_commit(tmp_path) is None  # not a checkout yet
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "bench.json").write_text("{}")
    (tmp_path / "op.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True)
    assert git_commit(tmp_path) == head.stdout.strip()
    (tmp_path / "benchmarks" / "results" / "bench.json").write_text('{"p50_ms": 1}')
    assert git_commit(tmp_path) == head.stdout.strip()
    (tmp_path / "op.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head.stdout.strip() + "-dirty"
