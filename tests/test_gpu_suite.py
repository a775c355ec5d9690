"""The GPU suite's plumbing (``benchmarks/gpu_suite.sh``), exercised on the CPU.

The dry run runs the suite's stages at tiny sizes; ``DIFFDET_SUITE_FAKE_SLOW`` makes a stage sleep
inside its cap, so the caps, the overall budget and the output layout the device tool returns (a flat
folder, at most 8 files of at most 16 MiB) are checked here without a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
STAGES = ["build", "headline", "gpu_tests", "kernel_bench", "memcheck", "grid", "racecheck", "onnx_gpu"]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout"
)


def run_suite(out: Path, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``bash gpu_suite.sh ARGS OUT`` with this interpreter and extra environment variables."""
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    for name in ("DIFFDET_SUITE_STAGES", "DIFFDET_SUITE_FAKE_SLOW", "DIFFDET_SUITE_BUDGET"):
        if name not in env:
            full_env.pop(name, None)
    return subprocess.run(
        ["bash", str(SUITE), *args, str(out)], cwd=ROOT, env=full_env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def stage_rows(out: Path) -> dict[str, dict]:
    """suite.json's stages by name, in the order written."""
    return {s["name"]: s for s in json.loads((out / "suite.json").read_text())["stages"]}


def check_layout(out: Path) -> None:
    """What the device tool returns: no subfolder, at most 8 plain files of at most 16 MiB."""
    entries = list(out.iterdir())
    assert all(p.is_file() and not p.is_symlink() for p in entries), entries
    assert len(entries) <= 8
    assert all(p.stat().st_size <= 16 << 20 for p in entries)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("suite") / "suite"
    return out, run_suite(out, "--dry-run")


@pytest.mark.slow  # about 30 s of CPU: every stage's command once, at tiny sizes
def test_dry_run_writes_every_stage_in_value_order_into_a_flat_folder(dry_run):
    out, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_layout(out)
    assert {p.name for p in out.iterdir()} == {
        "summary.txt", "suite.json", "logs.txt", "headline.json", "gpu_tests.xml", "kernel_bench.json",
        "grid.json", "onnx_gpu.json",
    }  # fmt: skip
    summary = (out / "summary.txt").read_text()
    assert len(summary.splitlines()) <= 30  # one screen
    positions = [summary.index(f"{i + 1} {name}") for i, name in enumerate(STAGES)]
    assert positions == sorted(positions)
    rows = stage_rows(out)
    assert list(rows) == STAGES
    assert rows["build"]["status"] == "skipped" and rows["memcheck"]["status"] == "skipped"
    assert all(rows[s]["status"] == "ok" for s in ("headline", "gpu_tests", "kernel_bench", "grid"))
    assert "0 failed" in rows["gpu_tests"]["note"] and "skipped" in rows["gpu_tests"]["note"]
    headline = json.loads((out / "headline.json").read_text())
    assert {(r["num_boxes"], r["steps"]) for r in headline["records"]} == {(5, 1), (7, 2)}
    assert {r["backend"] for r in headline["records"]} >= {"published", "fast"}
    assert "x published" in summary and "5x1 FPS" in summary
    grid = json.loads((out / "grid.json").read_text())
    assert {r["steps"] for r in grid["records"]} == {1, 2}
    assert rows["onnx_gpu"]["status"] == "ok", rows["onnx_gpu"]
    onnx_gpu = json.loads((out / "onnx_gpu.json").read_text())
    assert {r["mode"] for r in onnx_gpu["records"] if r["backend"] == "fast"} == {"fp32", "onnxruntime"}
    logs = (out / "logs.txt").read_text()
    assert all(f"===== {s}:" in logs for s in ("preflight", "headline", "gpu_tests", "grid"))


@pytest.mark.slow  # shares the dry run above
def test_dry_run_preflight_says_what_the_machine_has(dry_run):
    out, result = dry_run
    info = json.loads((out / "suite.json").read_text())["preflight"]
    assert info["torch"] == torch.__version__ and info["mode"] == "dry"
    assert "torch " + torch.__version__ in result.stdout and "nvcc" in result.stdout


def test_a_stage_is_cut_at_its_cap_and_later_stages_still_run(tmp_path):
    start = time.monotonic()
    result = run_suite(
        tmp_path, "--dry-run", DIFFDET_SUITE_STAGES="headline,memcheck",
        DIFFDET_SUITE_FAKE_SLOW="headline:120,memcheck:1", DIFFDET_SUITE_CAP_HEADLINE="2",
    )  # fmt: skip
    assert time.monotonic() - start < 100  # the fake 120 s sleep was cut
    assert result.returncode == 1, result.stdout + result.stderr
    rows = stage_rows(tmp_path)
    assert rows["headline"]["status"] == "timeout" and rows["headline"]["seconds"] < 30
    # memcheck ran after it: it slept its fake second, then skipped itself (no GPU in a dry run)
    assert rows["memcheck"]["seconds"] >= 1 and rows["memcheck"]["note"] == "dry run: no GPU"
    assert rows["build"]["status"] == "skipped" and "DIFFDET_SUITE_STAGES" in rows["build"]["note"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "2 headline       timeout" in summary and "cut at its 2s cap" in summary
    check_layout(tmp_path)


def test_the_overall_budget_stops_later_stages(tmp_path):
    budget = 12  # counted from the start, preflight included
    result = run_suite(
        tmp_path, "--dry-run", DIFFDET_SUITE_STAGES="headline,gpu_tests,grid",
        DIFFDET_SUITE_BUDGET=str(budget),
        DIFFDET_SUITE_MIN_START="1", DIFFDET_SUITE_FAKE_SLOW="headline:60",
    )  # fmt: skip
    rows = stage_rows(tmp_path)
    if rows["headline"]["status"] == "timeout":  # cut where the budget ends
        assert 0 < rows["headline"]["cap_s"] <= budget and result.returncode == 1
    else:  # a loaded machine spent the whole budget in the preflight
        assert "over budget" in rows["headline"]["note"]
    for stage in ("gpu_tests", "grid"):
        assert rows[stage]["status"] == "skipped" and "over budget" in rows[stage]["note"]
    check_layout(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the preflight would pass")
def test_preflight_stops_the_real_suite_within_seconds_without_a_gpu(tmp_path):
    start = time.monotonic()
    result = run_suite(tmp_path, timeout=120)
    assert time.monotonic() - start < 60
    assert result.returncode == 3, result.stdout + result.stderr
    assert "preflight FAILED" in result.stdout
    assert "no CUDA device" in result.stdout or "CPU-only build" in result.stdout
    summary = (tmp_path / "summary.txt").read_text()
    assert "0 preflight      FAILED" in summary
    assert all(row["status"] == "not run" for row in stage_rows(tmp_path).values())
    check_layout(tmp_path)


def test_preflight_names_a_missing_interpreter(tmp_path):
    result = run_suite(tmp_path, timeout=60, PYTHON="/nonexistent/python3")
    assert result.returncode == 3
    assert "preflight FAILED: /nonexistent/python3" in result.stdout


def test_usage_errors_exit_2(tmp_path):
    assert run_suite(tmp_path, "--bogus").returncode == 2
    assert subprocess.run(["bash", str(SUITE)], capture_output=True, check=False).returncode == 2


def load_report():
    """benchmarks/gpu_suite_report.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_suite_report", ROOT / "benchmarks" / "gpu_suite_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_merges_bench_runs_and_counts_junit(tmp_path, capsys):
    report = load_report()

    def record(mode, backend, boxes, fps, **extra):
        return {"mode": mode, "backend": backend, "num_boxes": boxes, "steps": 1, "fps": fps, **extra}

    runs = []
    for boxes in (300, 500):
        path = tmp_path / f"run{boxes}.json"
        records = [
            record("fp32", "published", boxes, 10.0),
            record("bf16", "fast", boxes, 25.0, speedup_vs_published=2.5),
        ]
        path.write_text(json.dumps({"meta": {"backbone": "R50", "size": [800, 1333]}, "records": records}))
        runs.append(str(path))
    runs.append(str(tmp_path / "cut-short-run-never-written.json"))
    assert report.main(["e2e", str(tmp_path / "merged.json"), *runs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "  R50 300x1 FPS: published 10.0, bf16 25.0 (2.50x)",
        "  R50 500x1 FPS: published 10.0, bf16 25.0 (2.50x)",
    ]
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert len(merged["runs"]) == 2 and all(r["backbone"] == "R50" for r in merged["records"])

    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite tests="7" failures="1" errors="1" skipped="2"></testsuite></testsuites>'
    )
    assert report.main(["junit", str(xml)]) == 0
    assert capsys.readouterr().out.strip() == "3 passed, 1 failed, 1 errors, 2 skipped"
    assert report.main(["junit", str(tmp_path / "missing.xml")]) == 0
    assert capsys.readouterr().out.strip() == "no results"


def test_report_reads_the_extensions_device_code(capsys):
    report = load_report()
    so, arches = report.extension_arches(ROOT)
    if so is None or report.find_cuobjdump() is None:
        pytest.skip("no built diffdet/_C*.so in this checkout, or no cuobjdump (nor Triton's copy)")
    from diffdet import _extension
    from diffdet.ops import OP_BACKENDS

    has_cuda = any(_extension.has_kernel(op, "cuda") for op in OP_BACKENDS)
    assert bool(arches) == has_cuda, arches  # a CPU-only build holds no device code
    assert all(a.startswith(("sm_", "compute_")) for a in arches)
    assert report.main(["arch", "sm_1", "--root", str(ROOT)]) == 1  # no such architecture
    if arches:
        assert report.main(["arch", arches[0], "--root", str(ROOT)]) == 0
        assert arches[0] in capsys.readouterr().out


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the GPU machine's python3: logs each call with the build variables; the suite's report
# runs for real, but its preflight and arch checks answer as an H200 would.
echo "ARCH=${TORCH_CUDA_ARCH_LIST:-} JOBS=${MAX_JOBS:-} CUDA=${DIFFDET_CUDA:-}" \\
    "INTERPRET=${TRITON_INTERPRET:-} $*" >> "$FAKE_LOG"
case "$1 ${2:-}" in
    *gpu_suite_report.py\\ preflight)
        printf '{"gpu": "NVIDIA H200"}' > "$6/preflight.json"
        printf 'SUITE_CAPABILITY=9.0\\nSUITE_CORES=16\\n' > "$6/preflight.env"
        echo "device    NVIDIA H200, capability 9.0 (sm_90)"; exit 0 ;;
    *gpu_suite_report.py\\ arch) echo "_C.so: sm_90"; exit 0 ;;
    -c\\ *onnxruntime*) echo "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"; exit 0 ;;
    *gpu_suite_report.py\\ *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


def test_real_mode_runs_each_stage_with_the_gpu_machines_commands(tmp_path):
    """The real suite's commands, in value order, with a stand-in python3 and compute-sanitizer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "compute-sanitizer").write_text('#!/usr/bin/env bash\necho "SANITIZER $*" >> "$FAKE_LOG"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "REAL_PYTHON": sys.executable,
        "PYTHON": "python3", "TRITON_INTERPRET": "1",
    }  # fmt: skip
    for name in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "DIFFDET_CUDA"):
        env[name] = ""
    full_env = {k: v for k, v in {**os.environ, **env}.items() if v != ""}
    out = tmp_path / "suite"
    result = subprocess.run(
        ["bash", str(SUITE), str(out)], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    calls = log.read_text().splitlines()
    build = next(c for c in calls if "-m pip install" in c)
    assert build.startswith("ARCH=9.0 JOBS=16 CUDA=1 INTERPRET= ")  # the card's arch only, every core
    assert "--no-build-isolation --no-deps --no-index -e ." in build
    benches = [c for c in calls if "-m diffdet bench" in c]
    headline = benches[:2]
    assert all("--device cuda --modes fp32,bf16,graph-bf16 --baselines published --size 800x1333" in c
               and "--batch 1" in c for c in headline)  # fmt: skip
    assert "--boxes 300 --steps 1 " in headline[0] and "--boxes 500 --steps 4 " in headline[1]
    assert any("model.backbone=SwinB" in c for c in benches[2:])
    assert any("--device cuda" in c and "--runtimes eager,onnxruntime" in c for c in benches)  # onnx_gpu
    order = [
        next(i for i, c in enumerate(calls) if key in c)
        for key in ("-m pip install", "--boxes 300 --steps 1", "-m pytest -m gpu", "benchmarks/bench_",
                    "SANITIZER --tool memcheck", "--boxes 2000", "SANITIZER --tool racecheck",
                    "--runtimes eager,onnxruntime")
    ]  # fmt: skip
    assert order == sorted(order)
    memcheck = [c for c in calls if "SANITIZER --tool memcheck" in c]
    assert [c.split()[-1] for c in memcheck] == ["tests/ops", "tests/kernels"]
    assert all(row["status"] == "ok" for row in stage_rows(out).values())
    summary = (out / "summary.txt").read_text()
    assert "device code: _C.so: sm_90" in summary and "R50 grid and SwinB" in summary
    check_layout(out)
