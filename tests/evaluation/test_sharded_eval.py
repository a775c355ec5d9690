"""Sharded evaluation: ``torchrun --nproc_per_node 2`` runs of ``diffdet eval`` (gloo, the images split by
rank, detections gathered on rank 0) print the metrics once and write the same metrics and results files
as one process: a tiny random-weight detector through ``python -m torch.distributed.run ... -m diffdet
eval`` on COCO and over a CrowdHuman sweep, and a stub detector with non-zero metrics on COCO, LVIS and
CrowdHuman."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from evalkit import ANNOTATIONS, COCO128, ROOT, lvis_file, use_stub_detector

from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

pytestmark = [
    pytest.mark.skipif(not ANNOTATIONS.is_file(), reason=f"coco128 not found at {COCO128}"),
    pytest.mark.usefixtures("one_thread"),
]

TINY = dict(
    backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
    num_proposals=8, min_size_test=48, max_size_test=64,
)  # fmt: skip
LAUNCH_TIMEOUT_S = 600  # the launcher and both workers are killed after this; a run takes ~10 s of CPU


def _weights(path: Path, **overrides) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, **overrides})
    return save_checkpoint(path, build_detector(cfg), cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, coco128_odgt) -> list[dict]:
    """``{"name", "argv" (no output options), "stub", "outputs"}`` per evaluation, stub runs last;
    odd image counts, so the two shards differ in size."""
    pytest.importorskip("lvis", reason="the lvis package is missing")
    tmp = tmp_path_factory.mktemp("evaluations")
    coco = _weights(tmp / "coco.pth")
    person = _weights(tmp / "person.pth", num_classes=1, class_names=("person",), category_ids=(1,))
    lvis_json = lvis_file(tmp / "lvis_v1_tiny.json", num_images=5)
    common = ["--device", "cpu", "--no-progress", "--steps", "1"]
    data = {
        "coco": ["--data", str(ANNOTATIONS), "--max-images", "5"],
        "lvis": ["--data", str(lvis_json), "--images", str(COCO128), "--max-images", "5"],
        "crowdhuman": ["--data", str(coco128_odgt["odgt"]), "--images", str(coco128_odgt["images"]),
                       "--max-images", "3"],
    }  # fmt: skip
    weights = {"coco": coco, "lvis": coco, "crowdhuman": person}  # stub runs do not read them
    real = [
        {"name": "coco", "argv": ["eval", *data["coco"], "--weights", str(coco), *common], "stub": False},
        {"name": "crowdhuman", "stub": False,
         "argv": ["eval", *data["crowdhuman"], "--weights", str(person), *common, "--boxes", "5,8"]},
    ]  # fmt: skip
    stubs = [
        {
            "name": f"{name}-stub",
            "argv": ["eval", *source, "--weights", str(weights[name]), *common],
            "stub": True,
        }
        for name, source in data.items()
    ]
    return real + stubs


def _with_outputs(run: dict, folder: Path) -> list[str]:
    suffix = ".odgt" if run["name"].startswith("crowdhuman") else ".json"
    results, metrics = folder / f"{run['name']}{suffix}", folder / f"{run['name']}_metrics.json"
    return [*run["argv"], "--results", str(results), "--metrics-out", str(metrics)]


def _torchrun(*program: str) -> str:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 PROGRAM...``; returns its stdout."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(here)]), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    process = subprocess.Popen(
        [*launcher, *program], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the launcher then stops its workers (own sessions)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        raise
    assert process.returncode == 0, stderr[-4000:]
    return stdout


def _sharded(runs: list[dict], folder: Path) -> str:
    """The first run as ``torchrun ... -m diffdet eval``, the others in one group (sharded_worker.py)."""
    first, *rest = runs
    stdout = _torchrun("-m", "diffdet", *_with_outputs(first, folder))
    spec = [{"argv": _with_outputs(run, folder), "stub": run["stub"]} for run in rest]
    return stdout + _torchrun(str(Path(__file__).with_name("sharded_worker.py")), json.dumps(spec))


def _single(runs: list[dict], folder: Path, monkeypatch) -> str:
    out = io.StringIO()
    for run in runs:
        if run["stub"]:
            use_stub_detector(monkeypatch.setattr)  # stub runs come last
        with contextlib.redirect_stdout(out):
            assert main(_with_outputs(run, folder)) == 0
    return out.getvalue()


def _rows(metrics_file: Path) -> list[dict]:
    """The metrics of a --metrics-out file: a table's rows (CrowdHuman), or the one dict (COCO, LVIS)."""
    rows = json.loads(metrics_file.read_text())
    return rows if isinstance(rows, list) else [rows]


def test_two_processes_print_and_write_what_one_process_does(runs, tmp_path, monkeypatch):
    sharded_out = _sharded(runs, tmp_path / "sharded")
    single_out = _single(runs, tmp_path / "single", monkeypatch)
    # rank 0 alone prints: every table once, and the same tables
    assert sharded_out.count(" over ") == single_out.count(" over ") == len(runs)
    assert sharded_out == single_out
    for run in runs:
        name = run["name"]
        single, sharded = (_rows(tmp_path / kind / f"{name}_metrics.json") for kind in ("single", "sharded"))
        assert len(sharded) == len(single), name
        for one, two in zip(single, sharded, strict=True):
            assert two == pytest.approx(one, abs=5e-4), name  # equal to 3 decimals
        files = sorted(p.name for p in (tmp_path / "single").glob(f"{name}.*"))
        files += sorted(p.name for p in (tmp_path / "single").glob(f"{name}_boxes*"))
        assert files, name
        for file in files:
            assert (tmp_path / "sharded" / file).read_bytes() == (tmp_path / "single" / file).read_bytes()
        if run["stub"]:  # the comparison is not between two all-zero results
            assert single[0]["AP50"] > 0.1, (name, single)
