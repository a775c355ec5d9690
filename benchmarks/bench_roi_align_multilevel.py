"""Benchmark of ``roi_align_multilevel`` (the ROIPooler of every head stage), providers side by side.

Providers: ``torchvision`` (``torchvision.ops.MultiScaleRoIAlign``: roi_align per level plus an index
scatter, the per-level loop detectron2's ROIPooler also runs), ``diffdet`` (the compiled op on the
same NCHW maps, which it copies a block of channels at a time into a channels-last scratch),
``diffdet_channels_last`` (the op on maps already channels-last, as a model that keeps its FPN
outputs channels-last passes them: 6 head stages share one copy) and ``reference`` (the plain-PyTorch
reference, forward, K <= 500).
Modes: ``forward`` and ``backward`` (the gradient w.r.t. the maps, forward not timed).
Shapes: an 800x1216 input, P2-P5 (strides 4-32), C = 256, float32; K boxes in total over B images
(K/B each), log-uniform sizes 16-800 pixels, uniform centres.

Issue #3's CPU targets (2 threads, same run): forward >= 3x and backward >= 2x faster than torchvision.

Run: ``python -m pytest benchmarks/bench_roi_align_multilevel.py --benchmark-enable`` (rows and
speedups land in ``benchmarks/results/bench_roi_align_multilevel-<machine>.json``).
"""

from __future__ import annotations

import pytest
import torch

from diffdet.bench.timing import Clock, percentile
from diffdet.ops import roi_align_multilevel, roi_align_multilevel_reference

torchvision = pytest.importorskip("torchvision")

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
IMAGE = (800, 1216)
C, LEVELS, MIN_LEVEL = 256, 4, 2
KS = [300, 500, 1000, 4000]
BATCHES = [1, 4]
ITERS = 20 if CUDA else 3
PROVIDERS = ["torchvision", "diffdet", "diffdet_channels_last", "reference"]
MODES = ["forward", "backward"]


def make_inputs(k: int, batch: int):
    """NCHW maps P2-P5 [B, C, H/s, W/s], boxes [K, 4] xyxy input pixels, batch_idx [K]."""
    g = torch.Generator().manual_seed(0)
    h, w = IMAGE
    feats = [
        torch.randn(batch, C, h // 2 ** (MIN_LEVEL + i), w // 2 ** (MIN_LEVEL + i), generator=g).to(DEVICE)
        for i in range(LEVELS)
    ]
    centre = torch.rand(k, 2, generator=g) * torch.tensor([w, h])
    size = torch.exp(torch.empty(k, 2).uniform_(2.77, 6.68, generator=g))  # 16 .. 800 pixels
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1).to(DEVICE)
    batch_idx = (torch.arange(k) * batch // k).to(DEVICE)  # K / B boxes per image, sorted by image
    return feats, boxes, batch_idx


def provider_fn(provider: str, feats, boxes, batch_idx):
    """A callable maps -> pooled [K, C, 7, 7] for ``provider``, and the maps it takes."""
    if provider == "torchvision":
        pooler = torchvision.ops.MultiScaleRoIAlign([f"p{i}" for i in range(LEVELS)], 7, 2)
        counts = torch.bincount(batch_idx, minlength=feats[0].shape[0]).tolist()
        per_image = list(boxes.split(counts))
        shapes = [IMAGE] * feats[0].shape[0]
        return lambda maps: pooler({f"p{i}": m for i, m in enumerate(maps)}, per_image, shapes), feats
    fn = roi_align_multilevel_reference if provider == "reference" else roi_align_multilevel
    if provider == "diffdet_channels_last":
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    return lambda maps: fn(maps, boxes, batch_idx), feats


def measure_ms(fn, setup) -> tuple[float, float, float]:
    """p50, p20, p80 milliseconds of ``fn(*setup())`` (setup untimed), one warm-up call."""
    clock, times = Clock(DEVICE), []
    for i in range(ITERS + 1):
        args = setup()
        start = clock.mark()
        fn(*args)
        end = clock.mark()
        clock.sync()
        if i:
            times.append(clock.elapsed_ms(start, end))
    return tuple(percentile(times, q) for q in (50.0, 20.0, 80.0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("k", KS)
def test_bench_roi_align_multilevel(benchmark, record_result, k, batch, provider, mode):
    if provider == "reference" and (mode == "backward" or k > 500):
        pytest.skip("the reference runs forward, K <= 500 (memory: [K, C, 14, 14] samples per level)")
    feats, boxes, batch_idx = make_inputs(k, batch)
    fn, maps = provider_fn(provider, feats, boxes, batch_idx)
    if mode == "forward":
        timed, setup = (lambda: fn(maps)), tuple
    else:
        grad = torch.randn(k, C, 7, 7, device=DEVICE)

        def setup():
            leaves = [m.detach().requires_grad_() for m in maps]
            return (fn(leaves),)

        def timed(out):
            out.backward(grad)

    benchmark.group = f"roi_align_multilevel {mode} K={k} B={batch}"
    iters = ITERS if not benchmark.disabled else 0
    if iters == 0:  # smoke run (--benchmark-disable): one call, nothing recorded
        benchmark.pedantic(lambda: timed(*setup()), rounds=1, iterations=1)
        return
    p50, p20, p80 = benchmark.pedantic(measure_ms, args=(timed, setup), rounds=1, iterations=1)
    record_result(
        dict(
            op="roi_align_multilevel",
            provider=provider,
            mode=mode,
            shape=f"K={k},B={batch}",
            dtype="float32",
            device=str(DEVICE),
            threads=torch.get_num_threads(),
            baseline="torchvision",
            p50_ms=p50,
            p20_ms=p20,
            p80_ms=p80,
        )
    )
