"""Benchmark of the 6-stage dynamic head against the published head, on the same weights and inputs.

Providers: ``published`` (tests/modeling/published_head.py: the transcription of the published
``head.py`` the parity tests hold diffdet's head to, pooling through detectron2's ROIPooler loop over
torchvision's roi_align, on NCHW maps as detectron2 passes them) and ``diffdet`` (diffdet's head with
its ops, on channels-last maps as :class:`~diffdet.modeling.detector.DiffusionDet` passes them at
inference). Both load one random-weight R50-config state_dict (80 classes, d_model 256, 6 stages).
Shapes: batch 1, P2-P5 maps of an 800x1333 input on CUDA and 320x544 on the CPU, 300 and 500 boxes
of 8-208 pixels, inference (no grad), fp32.

Run: ``python -m pytest benchmarks/bench_head.py --benchmark-enable`` (rows and speedups land in
``benchmarks/results/bench_head-<machine>.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from diffdet.bench.timing import Clock, percentile, time_calls
from diffdet.modeling.head import DynamicHead

pytest.importorskip("torchvision")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "modeling"))
from published_head import DynamicHead as PublishedHead

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
IMAGE = (800, 1333) if CUDA else (320, 544)
BOXES = [300, 500]
ITERS = 20 if CUDA else 3
PROVIDERS = ["published", "diffdet"]


@pytest.fixture(scope="module")
def heads() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = DynamicHead(80, (4, 8, 16, 32)).to(DEVICE).eval()
    published = PublishedHead(80, 256, 2048, 8, 6, num_cls=1, num_reg=3, dim_dynamic=64).to(DEVICE).eval()
    published.load_state_dict(ours.state_dict(), strict=True)
    return {"published": published, "diffdet": ours}


def make_inputs(num: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """NCHW maps P2-P5 [1, 256, H/s, W/s], boxes [1, num, 4] xyxy pixels, t [1]."""
    g = torch.Generator().manual_seed(0)
    h, w = IMAGE
    feats = [torch.randn(1, 256, h // s, w // s, generator=g).to(DEVICE) for s in (4, 8, 16, 32)]
    centre = torch.rand(1, num, 2, generator=g) * torch.tensor([w, h])
    size = torch.rand(1, num, 2, generator=g) * 200 + 8
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1).to(DEVICE)
    return feats, boxes, torch.tensor([999], device=DEVICE)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("num", BOXES)
def test_bench_head(benchmark, record_result, heads, provider, num):
    feats, boxes, t = make_inputs(num)
    if provider == "diffdet":
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    head = heads[provider]
    benchmark.group = f"head {IMAGE[0]}x{IMAGE[1]} {num} boxes"

    def measure() -> tuple[float, float, float]:
        with torch.no_grad():
            times = time_calls(lambda: head(feats, boxes, t), Clock(DEVICE), warmup=1, iters=ITERS)
        return tuple(percentile(times, q) for q in (50.0, 20.0, 80.0))

    if benchmark.disabled:  # smoke run: one call, nothing recorded
        with torch.no_grad():
            logits, pred = benchmark.pedantic(lambda: head(feats, boxes, t), rounds=1, iterations=1)
        assert logits.shape == (6, 1, num, 80) and pred.shape == (6, 1, num, 4)
        return
    p50, p20, p80 = benchmark.pedantic(measure, rounds=1, iterations=1)
    record_result(
        dict(
            op="dynamic_head",
            provider=provider,
            mode="forward",
            shape=f"{IMAGE[0]}x{IMAGE[1]},P={num}",
            dtype="float32",
            device=str(DEVICE),
            threads=torch.get_num_threads(),
            baseline="published",
            p50_ms=p50,
            p20_ms=p20,
            p80_ms=p80,
        )
    )
