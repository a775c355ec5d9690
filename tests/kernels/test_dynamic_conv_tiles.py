"""The dynamic_conv kernels' config pruning, as plain functions on the CPU with the GPU config lists
(the interpreter runs one config and never prunes), for the H100/H200 budget of 227 KiB per block."""

import pytest

triton = pytest.importorskip("triton")

from diffdet.kernels import _dynamic_conv_tiles as tiles  # noqa: E402  (after the skip: needs triton)

HOPPER = 227 * 1024
FP32, HALF = 4, 2  # element sizes: fp32; bf16 and fp16


def test_shared_memory_estimates_hand_computed():
    # Kernel 1 at C = 256, D = 64, BLOCK_S = 64 (49 bins), BLOCK_CK = 64, 2 stages, fp32:
    # 2 * (64*64 + 64*64) * 4 (GEMM 1 operands) + (64*64 + 64*256) * 4 (GEMM 2) + 64*256*4 (LN_C tile).
    assert tiles.bins_shared_memory(64, 256, 64, 64, 2, FP32) == 65536 + 81920 + 65536
    # num_stages = 1 stages nothing extra; 0 counts as 1 (no pipelining still holds one copy).
    assert tiles.bins_shared_memory(16, 32, 16, 32, 0, HALF) == tiles.bins_shared_memory(
        16, 32, 16, 32, 1, HALF
    )
    # Kernel 2 at BLOCK_M = 64, BLOCK_N = 256, BLOCK_K = 32, 3 stages, bf16: 3*(64+256)*32*2 + 64*256*4.
    assert tiles.out_shared_memory(64, 256, 32, 3, HALF) == 61440 + 65536


@pytest.mark.parametrize("elem_size", [FP32, HALF], ids=["fp32", "half"])
@pytest.mark.parametrize("c", [1, 24, 64, 200, 256, 257, 320, 512])
@pytest.mark.parametrize(("s2", "d"), [(49, 64), (9, 8), (81, 64), (49, 128)])
def test_every_accepted_shape_keeps_a_config_that_fits(elem_size, c, s2, d):
    """C up to 512 with D <= 64 (up to 256 with D = 128 in fp32, whose P2 tile alone is 128 KiB at
    C = 256), any dtype, S2 <= 81: at least one config of each kernel is kept, and every kept config's
    estimates fit 227 KiB and its accumulator fits the registers."""
    if d == 128 and c > 256 and elem_size == FP32:
        assert not tiles.kernels_fit(s2, c, d, elem_size, HOPPER)  # the reference runs it
        return
    assert tiles.kernels_fit(s2, c, d, elem_size, HOPPER)
    bins = tiles.keep_bins_configs(tiles.BINS_CONFIGS, s2=s2, c=c, d=d, elem_size=elem_size, budget=HOPPER)
    assert bins, "kernel 1: every config pruned"
    for cfg in bins:
        bs, ck = cfg.kwargs["BLOCK_S"], cfg.kwargs["BLOCK_CK"]
        assert bs <= tiles.pow2(s2)
        assert (
            tiles.bins_shared_memory(bs, tiles.pow2(c), tiles.pow2(d), ck, cfg.num_stages, elem_size)
            <= HOPPER
        )
        assert tiles.fits_registers(cfg, bs, tiles.pow2(c))
    block_m = tiles.out_block_m(c, elem_size, HOPPER)
    assert block_m is not None
    outs = tiles.keep_out_configs(tiles.OUT_CONFIGS, block_m=block_m, c=c, elem_size=elem_size, budget=HOPPER)
    assert outs, "kernel 2: every config pruned"
    for cfg in outs:
        used = tiles.out_shared_memory(
            block_m, tiles.pow2(c), cfg.kwargs["BLOCK_K"], cfg.num_stages, elem_size
        )
        assert used <= HOPPER and tiles.fits_registers(cfg, block_m, tiles.pow2(c))


def test_published_size_keeps_whole_proposal_tiles():
    """C = 256, D = 64, 49 bins: one program per proposal (BLOCK_S = 64) and BLOCK_M = 64, as before."""
    for elem_size in (FP32, HALF):
        bins = tiles.keep_bins_configs(
            tiles.BINS_CONFIGS, s2=49, c=256, d=64, elem_size=elem_size, budget=HOPPER
        )
        assert {cfg.kwargs["BLOCK_S"] for cfg in bins} == {64}
        assert tiles.out_block_m(256, elem_size, HOPPER) == 64


def test_large_c_takes_smaller_tiles():
    """fp32 at C = 320 pruned every config before (and the fallback config overflowed shared memory):
    now smaller row tiles fit."""
    bins = tiles.keep_bins_configs(tiles.BINS_CONFIGS, s2=49, c=320, d=64, elem_size=FP32, budget=HOPPER)
    assert bins and max(cfg.kwargs["BLOCK_S"] for cfg in bins) < 64
    assert tiles.out_block_m(320, FP32, HOPPER) < 64


@pytest.mark.parametrize(("c", "elem_size"), [(640, FP32), (1024, FP32), (2048, HALF)])
def test_shapes_beyond_the_kernels_do_not_fit(c, elem_size):
    """Such shapes run the reference (diffdet.ops.dynamic_conv checks kernels_fit)."""
    assert not tiles.kernels_fit(49, c, 64, elem_size, HOPPER)


def test_no_budget_means_no_limit():
    """The interpreter (budget None) runs every shape with its single config."""
    assert tiles.kernels_fit(49, 4096, 256, FP32, None)


# Compiles kernels for sm_90 ahead of time (no GPU needed: Triton's bundled ptxas) in a fresh process,
# since this one runs Triton in the interpreter, and prints each one's shared memory in bytes.
_AOT_SCRIPT = """
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from diffdet.kernels import dynamic_conv as dc

kernels = {"bins": dc._dynamic_conv_bins_kernel.fn, "out": dc._dynamic_conv_out_kernel.fn.fn}
shared = []
for name, ptr, consts, warps, stages in json.loads(sys.argv[1]):
    fn = kernels[name]
    sig = {n: "constexpr" if n in consts else "fp32" if n == "eps" else ptr if n.endswith("_ptr") else "i32"
           for n in fn.arg_names}
    if name == "out":
        sig["partial_ptr"] = "*fp32"
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    options = dict(num_warps=warps, num_stages=stages)
    shared.append(triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).metadata.shared)
print(json.dumps(shared))
"""


def _largest_bins_case(c: int, ptr: str, size: int) -> tuple[tuple, int]:
    """Kernel 1's kept config with the largest estimate at (C, D = 64, 49 bins): (case, estimate)."""
    bc = tiles.pow2(c)
    kept = tiles.keep_bins_configs(tiles.BINS_CONFIGS, s2=49, c=c, d=64, elem_size=size, budget=HOPPER)
    sized = [
        (tiles.bins_shared_memory(g.kwargs["BLOCK_S"], bc, 64, g.kwargs["BLOCK_CK"], g.num_stages, size), g)
        for g in kept
    ]
    estimate, g = max(sized, key=lambda pair: pair[0])
    consts = dict(g.kwargs, BLOCK_C=bc, BLOCK_D=64, IEEE=size == FP32, DOT_FP32=False)
    return ("bins", ptr, consts, g.num_warps, g.num_stages), estimate


def _largest_out_case(c: int, ptr: str, size: int) -> tuple[tuple, int]:
    """Kernel 2's kept config with the largest estimate at C (its BLOCK_M): (case, estimate)."""
    bc, bm = tiles.pow2(c), tiles.out_block_m(c, size, HOPPER)
    kept = tiles.keep_out_configs(tiles.OUT_CONFIGS, block_m=bm, c=c, elem_size=size, budget=HOPPER)
    sized = [(tiles.out_shared_memory(bm, bc, g.kwargs["BLOCK_K"], g.num_stages, size), g) for g in kept]
    estimate, g = max(sized, key=lambda pair: pair[0])
    consts = dict(g.kwargs, BLOCK_M=bm, BLOCK_N=bc, SPLIT_K=1, IEEE=size == FP32, DOT_FP32=False)
    consts.update(EVEN_K=49 * c % g.kwargs["BLOCK_K"] == 0, EVEN_N=c == bc)
    return ("out", ptr, consts, g.num_warps, g.num_stages), estimate


def test_estimates_bound_the_shared_memory_triton_compiles_for_sm90():
    """The kept config with the largest estimate, per kernel, at fp32 C = 512 and bf16 C = 1024
    (D = 64, 49 bins), compiled for sm_90: Triton's shared memory <= the estimate <= 227 KiB."""
    import json
    import os
    import subprocess
    import sys

    pairs = [make(c, ptr, size) for c, ptr, size in [(512, "*fp32", FP32), (1024, "*bf16", HALF)]
             for make in (_largest_bins_case, _largest_out_case)]  # fmt: skip
    cases = [case for case, _ in pairs]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", _AOT_SCRIPT, json.dumps(cases)]
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend to compile for sm_90")
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    shared = json.loads(run.stdout.strip().splitlines()[-1])
    for (case, estimate), used in zip(pairs, shared, strict=True):
        assert used <= estimate <= HOPPER, f"{case}: compiled {used} B, estimated {estimate} B"
