"""End-to-end detection under pytest-benchmark: the fast path beside the baseline backends.

Providers: ``reference`` (``set_backend("reference")``: the plain-PyTorch ops), ``published``
(``set_backend("published")``: the published computation, torchvision's pooling loop and NMS among it)
on a copy of the model whose backbone runs as the published code's does (NCHW, FrozenBN unfolded:
:func:`~diffdet.bench.pipeline.published_copy`), and ``diffdet`` (the fast ops on the fp32 copy with
the inference fusions on: FrozenBN folded, channels-last backbone, oneDNN post-ops), as ``diffdet
bench`` compares them.
Settings: 1 step at 300 boxes and 4 steps at 500 boxes, batch 1, random R50 weights (speed does not
depend on the weights), uniform noise images. Each call is
:func:`diffdet.bench.pipeline.staged_detect`, whose per-component milliseconds (backbone+fpn,
head steps, sampler, NMS) land in the benchmark's ``extra_info``.

Input size: 800x1333 on CUDA; 320x544 on the CPU, where R50 at full size takes seconds per call.
``DIFFDET_BENCH_E2E_SIZE=HxW`` and ``DIFFDET_BENCH_E2E_BACKBONE`` (R18/R50/R101) override them.
The full grid, bf16/fp16, CUDA graphs and AP are ``diffdet bench``'s job.

Run: ``python -m pytest benchmarks/bench_e2e.py --benchmark-enable`` (marked slow on the CPU).
"""

from __future__ import annotations

import os

import pytest
import torch

from diffdet.bench.grid import synthetic_images
from diffdet.bench.pipeline import folded_copy, published_copy, staged_detect
from diffdet.bench.report import device_name
from diffdet.bench.timing import Clock
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig
from diffdet.ops._backend import AUTO, set_backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_DEFAULT_SIZE = "800x1333" if DEVICE.type == "cuda" else "320x544"
SIZE = tuple(int(v) for v in os.environ.get("DIFFDET_BENCH_E2E_SIZE", _DEFAULT_SIZE).split("x"))
BACKBONE = os.environ.get("DIFFDET_BENCH_E2E_BACKBONE", "R50")
SETTINGS = [(300, 1), (500, 4)]
PROVIDERS = ["reference", "published", "diffdet"]
ROUNDS = 20 if DEVICE.type == "cuda" else 3
pytestmark = [] if DEVICE.type == "cuda" else [pytest.mark.slow]  # R50 on a CPU: minutes per case


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """The fast fp32 copy (``diffdet``) and the published-layout copy (the baselines), random weights."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=BACKBONE, min_size_test=min(SIZE), max_size_test=max(SIZE))
    model = build_detector(cfg).to(DEVICE)
    return {"fast": folded_copy(model, torch.float32), "published": published_copy(model)}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("num_boxes", "steps"), SETTINGS, ids=[f"{p}boxes-{s}steps" for p, s in SETTINGS])
def test_bench_e2e(benchmark, models, provider, num_boxes, steps):
    images = synthetic_images(1, SIZE, seed=0, device=DEVICE)
    clock = Clock(DEVICE)
    backend = AUTO if provider == "diffdet" else provider
    model = models["fast" if provider == "diffdet" else "published"]

    def detect():
        with set_backend(backend):
            return staged_detect(model, images, num_boxes=num_boxes, steps=steps, seed=0, clock=clock)

    benchmark.group = f"e2e {BACKBONE} {SIZE[0]}x{SIZE[1]} {num_boxes} boxes {steps} steps"
    detections, parts = benchmark.pedantic(detect, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"device": device_name(DEVICE), "size": list(SIZE), "backbone": BACKBONE, "components_ms": parts}
    )
    assert len(detections) == 1 and detections[0]["boxes"].shape[1] == 4
    assert parts["total"] >= parts["backbone+fpn"] > 0
