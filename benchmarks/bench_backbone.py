"""Benchmark of the backbones with their FPN: R50-FPN, and Swin-B-FPN against the published Swin.

Providers for Swin-B (op ``swinb_fpn``): ``published`` (tests/modeling/published_swin.py: the
transcription of the published ``swintransformer.py`` forward that the parity tests hold diffdet's Swin
to, explicit q·kᵀ attention and per-step copies, under the same FPN) and ``diffdet`` (diffdet's Swin:
SDPA attention with the bias and mask as one float mask, roll/partition as one gather). Both hold the
same random Swin-B (B-22k) weights. R50-FPN (op ``r50_fpn``, FrozenBN folded as for inference) is timed
by itself, as the scale the Swin-B cost compares to. Batch 1, an 800x1216 input on CUDA and 320x544 on
the CPU (both pad in every Swin stage), inference (no grad), fp32.

Run: ``python -m pytest benchmarks/bench_backbone.py --benchmark-enable`` (rows and speedups land in
``benchmarks/results/bench_backbone-<machine>.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from diffdet.bench.timing import Clock, percentile, time_calls
from diffdet.modeling.backbone import build_backbone, fold_frozen_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "modeling"))
from published_swin import SwinTransformer as PublishedSwin

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
IMAGE = (800, 1216) if CUDA else (320, 544)
ITERS = 20 if CUDA else 3
CASES = [("r50_fpn", "diffdet"), ("swinb_fpn", "published"), ("swinb_fpn", "diffdet")]


@pytest.fixture(scope="module")
def backbones() -> dict[tuple[str, str], torch.nn.Module]:
    torch.manual_seed(0)
    r50 = build_backbone("R50")
    fold_frozen_batchnorm(r50)
    ours = build_backbone("SwinB-22k")
    published = build_backbone("SwinB-22k")
    # The same FPN convs on the published trunk: only bottom_up differs between the two providers.
    published.bottom_up = PublishedSwin(128, (2, 2, 18, 2), (4, 8, 16, 32))
    published.load_state_dict(ours.state_dict(), strict=True)
    models = {
        ("r50_fpn", "diffdet"): r50,
        ("swinb_fpn", "published"): published,
        ("swinb_fpn", "diffdet"): ours,
    }
    return {k: m.to(DEVICE).eval() for k, m in models.items()}


@pytest.mark.parametrize(("op", "provider"), CASES)
def test_bench_backbone(benchmark, record_result, backbones, op, provider):
    model = backbones[(op, provider)]
    x = torch.randn(1, 3, *IMAGE, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    benchmark.group = f"backbone+FPN {IMAGE[0]}x{IMAGE[1]}"

    def measure() -> tuple[float, float, float]:
        with torch.no_grad():
            times = time_calls(lambda: model(x), Clock(DEVICE), warmup=1, iters=ITERS)
        return tuple(percentile(times, q) for q in (50.0, 20.0, 80.0))

    if benchmark.disabled:  # smoke run: one call at a small size, nothing recorded
        with torch.no_grad():
            out = benchmark.pedantic(lambda: model(x[..., :64, :96]), rounds=1, iterations=1)
        assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]
        return
    p50, p20, p80 = benchmark.pedantic(measure, rounds=1, iterations=1)
    record_result(
        dict(
            op=op,
            provider=provider,
            mode="forward",
            shape=f"{IMAGE[0]}x{IMAGE[1]}",
            dtype="float32",
            device=str(DEVICE),
            threads=torch.get_num_threads(),
            baseline="published",
            p50_ms=p50,
            p20_ms=p20,
            p80_ms=p80,
        )
    )
