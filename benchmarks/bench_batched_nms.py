"""Benchmark of ``batched_nms`` (class-aware NMS at the end of inference), providers side by side.

Providers: ``torchvision`` (``torchvision.ops.batched_nms``), ``diffdet`` (the compiled op) and
``reference`` (the plain-PyTorch per-class greedy loop). Mode: ``forward``.
Shapes: K boxes over 80 classes, as DiffusionDet's inference feeds it (top-K class-box pairs of an
800x1216 image): boxes clustered around 60 objects so that suppression happens, distinct scores.

Issue #3's CPU targets (2 threads, same run): never slower than torchvision; >= 2x faster at K = 4000.

Run: ``python -m pytest benchmarks/bench_batched_nms.py --benchmark-enable``.
"""

from __future__ import annotations

import pytest
import torch

from diffdet.bench.timing import Clock, percentile, time_calls
from diffdet.ops import batched_nms, batched_nms_reference

torchvision = pytest.importorskip("torchvision")

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
KS = [300, 500, 1000, 4000]
CLASSES = 80
ITERS = 50 if CUDA else 20
PROVIDERS = {
    "torchvision": torchvision.ops.batched_nms,
    "diffdet": batched_nms,
    "reference": batched_nms_reference,
}


def make_inputs(k: int):
    """boxes [K, 4] xyxy pixels around 60 objects, scores [K] in (0, 1), idxs [K] in [0, 80)."""
    g = torch.Generator().manual_seed(0)
    objects = torch.rand(60, 2, generator=g) * torch.tensor([1216.0, 800.0])
    centre = objects[torch.randint(0, 60, (k,), generator=g)] + torch.randn(k, 2, generator=g) * 10
    size = torch.exp(torch.empty(k, 2).uniform_(3.0, 6.0, generator=g))
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    scores = torch.rand(k, generator=g)
    idxs = torch.randint(0, CLASSES, (k,), generator=g)
    return boxes.to(DEVICE), scores.to(DEVICE), idxs.to(DEVICE)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("k", KS)
def test_bench_batched_nms(benchmark, record_result, k, provider):
    boxes, scores, idxs = make_inputs(k)
    fn = PROVIDERS[provider]
    benchmark.group = f"batched_nms K={k}"
    if benchmark.disabled:  # smoke run: one call, nothing recorded
        benchmark.pedantic(fn, args=(boxes, scores, idxs, 0.5), rounds=1, iterations=1)
        return
    iters = 3 if provider == "reference" else ITERS

    def measure():
        times = time_calls(lambda: fn(boxes, scores, idxs, 0.5), Clock(DEVICE), warmup=1, iters=iters)
        return tuple(percentile(times, q) for q in (50.0, 20.0, 80.0))

    p50, p20, p80 = benchmark.pedantic(measure, rounds=1, iterations=1)
    record_result(
        dict(
            op="batched_nms",
            provider=provider,
            mode="forward",
            shape=f"K={k},classes={CLASSES}",
            dtype="float32",
            device=str(DEVICE),
            threads=torch.get_num_threads(),
            baseline="torchvision",
            p50_ms=p50,
            p20_ms=p20,
            p80_ms=p80,
        )
    )
