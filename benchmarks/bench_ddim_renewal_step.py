"""Benchmark of ``ddim_renewal_step`` (DDIM update + box renewal + refill), every provider side by side.

Providers: ``reference`` (the literal transcription of the published step: boolean masks, ``cat``,
host syncs), ``torch`` (the vectorised, sync-free PyTorch path that CPU tensors run), ``torch_compile``
(that path under torch.compile, CUDA only) and ``diffdet`` (the one-launch Triton kernel, CUDA only).
Shapes follow the sampler: B images x P proposals, 80 COCO classes, the 749 -> 499 step of 4-step
sampling, about half the boxes kept.

Issue #4's H100 target: ``diffdet`` <= 0.005 ms at B = 1, P = 500, in one launch.

Each row's p50/p20/p80 milliseconds per call (``triton.testing.do_bench`` on CUDA, per-call
perf_counter on the CPU) and GB/s against the compulsory bytes land in the benchmark's ``extra_info``.

Run: ``python -m pytest benchmarks/bench_ddim_renewal_step.py --benchmark-enable``.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffdet.bench.report import device_name, git_commit
from diffdet.bench.timing import Clock, percentile, time_calls
from diffdet.ops import ddim_renewal_step, ddim_renewal_step_reference
from diffdet.ops.ddim_renewal_step import _ddim_renewal_step_torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
NUM_CLASSES = 80
SHAPES = [(1, 300), (1, 500), (4, 500), (8, 1000)]
PROVIDERS = ["reference", "torch", "torch_compile", "diffdet"]


def measure_ms(fn) -> tuple[float, float, float]:
    """p50, p20 and p80 milliseconds per call of ``fn`` on DEVICE."""
    if CUDA:
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    times = time_calls(fn, Clock(DEVICE), warmup=2, iters=20)
    return tuple(percentile(times, q) for q in (50.0, 20.0, 80.0))


def cosine_alpha(t: int, timesteps: int = 1000, s: float = 0.008) -> float:
    """alphas_cumprod[t] of the published cosine schedule (REFERENCE.md §4), without the beta clip."""
    f = lambda x: math.cos((x / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return f(t + 1) / f(0)


def make_inputs(b: int, p: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    whwh = torch.tensor([1333.0, 800.0, 1333.0, 800.0]).repeat(b, 1)
    centre = torch.rand(b, p, 2, generator=g) * whwh[:, None, :2]
    size = torch.rand(b, p, 2, generator=g) * 300
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    logits = (
        torch.randn(b, p, NUM_CLASSES, generator=g) - 2.4
    )  # about half the boxes score > 0.5 (max of 80 normals ~ 2.4)
    img = torch.randn(b, p, 4, generator=g, dtype=torch.float64)
    noise = [torch.randn(b, p, 4, generator=g) for _ in range(2)]
    return tuple(x.to(DEVICE) for x in (img, boxes, logits, whwh, *noise))


def step_for(provider: str):
    if provider == "reference":
        return ddim_renewal_step_reference
    if provider == "torch":
        return lambda *a, **kw: _ddim_renewal_step_torch(*a, **{"eta": 1.0, "scale": 2.0, **kw})
    if provider == "torch_compile":
        step = torch.compile(_ddim_renewal_step_torch, dynamic=False)
        return lambda *a, **kw: step(*a, **{"eta": 1.0, "scale": 2.0, **kw})
    return ddim_renewal_step


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}_P{s[1]}")
def test_bench_ddim_renewal_step(benchmark, shape, provider):
    if provider in ("torch_compile", "diffdet") and not CUDA:
        pytest.skip(f"{provider} runs on CUDA only (the CPU path is the vectorised torch step)")
    b, p = shape
    inputs = make_inputs(b, p)
    kwargs = {"alpha": cosine_alpha(749), "alpha_next": cosine_alpha(499)}
    kwargs |= {"renewal_threshold": 0.5, "renewal": True}
    step = step_for(provider)
    benchmark.group = f"ddim_renewal_step B={b} P={p}"
    p50, p20, p80 = benchmark.pedantic(
        measure_ms, args=(lambda: step(*inputs, **kwargs),), rounds=1, iterations=1
    )
    nbytes = sum(x.numel() * x.element_size() for x in inputs) + b * p * 4 * (8 + 4) + b * 8
    benchmark.extra_info.update(
        {
            "op": "ddim_renewal_step",
            "provider": provider,
            "mode": "forward",
            "shape": f"B={b},P={p},classes={NUM_CLASSES}",
            "dtype": "float32 (img float64)",
            "device": device_name(DEVICE),
            "commit": git_commit(),
            "p50_ms": p50,
            "p20_ms": p20,
            "p80_ms": p80,
            "gbps": nbytes / p50 / 1e6,
        }
    )
