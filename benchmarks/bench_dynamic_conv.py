"""Benchmark of ``dynamic_conv`` (DiffusionDet instance interaction), every provider side by side.

Providers: ``reference`` (eager PyTorch, the published op sequence), ``torch_compile`` (the reference
under torch.compile, CUDA only) and ``diffdet`` (the Triton kernels, CUDA only). Modes:
``dynamic_conv`` (the op alone, forward), ``interaction`` (the 256 -> 2*C*D ``dynamic_layer`` Linear
plus the op, forward: the whole per-stage cost) and ``full`` (the op's forward and backward, as in
training). Shapes follow the real call: K = B*P proposals, C = 256, D = 64, 7x7 bins.

Issue #4's H100 bf16 K=500 targets: ``diffdet/dynamic_conv`` <= 0.025 ms, ``diffdet/interaction``
at least 2x faster than ``reference/interaction``. On the CPU only the eager path runs (fp32), so its
time shows regressions.

Each row's p50/p20/p80 milliseconds per call (``triton.testing.do_bench`` on CUDA, per-call
perf_counter on the CPU), TFLOP/s of the matmuls and GB/s against the compulsory bytes land in the
benchmark's ``extra_info``; pytest-benchmark's own time is that of the whole measurement.

Run: ``python -m pytest benchmarks/bench_dynamic_conv.py --benchmark-enable``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffdet.bench.report import device_name, git_commit
from diffdet.bench.timing import Clock, percentile, time_calls
from diffdet.ops import dynamic_conv, dynamic_conv_reference

C, D, S = 256, 64, 7
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = [torch.bfloat16, torch.float16, torch.float32] if CUDA else [torch.float32]
KS = [100, 300, 500, 1000, 4000] if CUDA else [300, 500]
CPU_ITERS = 3  # eager K=500 takes about a second per call on a small CPU
PROVIDERS = ["reference", "torch_compile", "diffdet"]
MODES = ["dynamic_conv", "interaction", "full"]


def measure_ms(fn) -> tuple[float, float, float]:
    """p50, p20 and p80 milliseconds per call of ``fn`` on DEVICE."""
    if CUDA:
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    times = time_calls(fn, Clock(DEVICE), warmup=1, iters=CPU_ITERS)
    return tuple(percentile(times, q) for q in (50.0, 20.0, 80.0))


def make_inputs(k: int, dtype: torch.dtype):
    """pro_features [K, C], dynamic_layer weight and bias, and the op's tensors other than params."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)

    pro = rand(k, C)
    dyn_w, dyn_b = rand(2 * C * D, C, scale=C**-0.5), rand(2 * C * D, scale=0.1)
    ones = lambda n: torch.ones(n, device=DEVICE, dtype=dtype)
    zeros = lambda n: torch.zeros(n, device=DEVICE, dtype=dtype)
    roi = rand(k, S * S, C)
    rest = [ones(D), zeros(D), ones(C), zeros(C), rand(C, S * S * C, scale=(S * S * C) ** -0.5)]
    rest += [zeros(C), ones(C), zeros(C)]
    return pro, dyn_w, dyn_b, [roi, *rest]


def op_for(provider: str):
    if provider == "reference":
        return dynamic_conv_reference
    if provider == "torch_compile":
        return torch.compile(dynamic_conv_reference, dynamic=False)
    return dynamic_conv


def flops_and_bytes(k: int, mode: str, element_size: int) -> tuple[float, float]:
    """FLOPs of the matmuls and the compulsory bytes (inputs read once, output written once)."""
    op_flops = k * (2 * S * S * C * D * 2 + 2 * S * S * C * C)
    op_bytes = (k * (S * S * C + 2 * C * D + C) + C * S * S * C) * element_size
    if mode == "interaction":
        return op_flops + 2 * k * C * 2 * C * D, op_bytes + (k * C + 2 * C * D * C) * element_size
    if mode == "full":  # backward: about twice the forward's matmuls, gradients written
        return 3 * op_flops, 2 * op_bytes
    return op_flops, op_bytes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", KS)
def test_bench_dynamic_conv(benchmark, k, dtype, provider, mode):
    if provider != "reference" and not CUDA:
        pytest.skip(f"{provider} runs on CUDA only (the CPU path is the reference)")
    pro, dyn_w, dyn_b, tensors = make_inputs(k, dtype)
    op = op_for(provider)
    params = F.linear(pro, dyn_w, dyn_b)
    if mode == "dynamic_conv":
        fn = lambda: op(tensors[0], params, *tensors[1:])
    elif mode == "interaction":
        fn = lambda: op(tensors[0], F.linear(pro, dyn_w, dyn_b), *tensors[1:])
    else:
        leaves = [t.clone().requires_grad_() for t in (tensors[0], params, *tensors[1:])]
        grad = torch.randn(k, C, device=DEVICE, dtype=dtype)
        fn = lambda: torch.autograd.backward(op(*leaves), grad)
    benchmark.group = f"dynamic_conv {mode} K={k} {dtype}"
    p50, p20, p80 = benchmark.pedantic(measure_ms, args=(fn,), rounds=1, iterations=1)
    flops, nbytes = flops_and_bytes(k, mode, tensors[0].element_size())
    benchmark.extra_info.update(
        {
            "op": "dynamic_conv",
            "provider": provider,
            "mode": mode,
            "shape": f"K={k},C={C},D={D},S2={S * S}",
            "dtype": str(dtype).removeprefix("torch."),
            "device": device_name(DEVICE),
            "commit": git_commit(),
            "p50_ms": p50,
            "p20_ms": p20,
            "p80_ms": p80,
            "tflops": flops / p50 / 1e9,
            "gbps": nbytes / p50 / 1e6,
        }
    )
