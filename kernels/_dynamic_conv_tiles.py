"""Tile configurations of the dynamic_conv kernels and the rules that prune them, as plain functions.

The autotuner's prune hooks (``kernels/dynamic_conv.py``) and the host's "can the kernels run this
shape here?" test call the same functions, which are tested on the CPU with the GPU config lists: the
interpreter runs a single config and never prunes.

Two limits per config, both estimated on the host:

- registers: a [rows, cols] fp32 tile held by ``num_warps`` warps spills beyond ``ACC_REGISTERS``
  values per thread (ptxas, sm_90, BLOCK_N = 256). Spilling is correct but slow, so such configs go.
- shared memory: an *upper* estimate (:func:`bins_shared_memory`, :func:`out_shared_memory`) that adds
  every operand tile as staged by the software pipeline and one fp32 tile for the epilogue's layout
  change, assuming no reuse between them. A config over the device's per-block limit would raise
  ``OutOfResources`` at its launch; an estimate too high only drops a config that would have fitted.

Kernel 1 tiles the S2 bins of a proposal by BLOCK_S rows (one program per tile). It keeps the largest
BLOCK_S that fits, the whole padded S2 when it does (P1 and P2 are then read once per proposal), so
C <= 256 runs exactly the configs it ran before tiling; larger C take smaller row tiles. Kernel 2's
BLOCK_M shrinks the same way (:func:`out_block_m`). A shape no config fits is not run by the kernels
(:func:`kernels_fit`): ``diffdet.ops.dynamic_conv`` then runs the reference.
"""

from __future__ import annotations

import functools

import torch
import triton

ACC_REGISTERS = 64  # fp32 accumulator values per thread above which ptxas spills (BLOCK_N = 256)
HOPPER_SHARED_MEMORY = 227 * 1024  # bytes per block (opt-in) on sm_90 (H100, H200); A100: 163 KiB

# Kernel 1: row tile x C-chunk of the first GEMM x warps x pipeline stages.
BINS_CONFIGS = [
    triton.Config({"BLOCK_S": bs, "BLOCK_CK": ck}, num_warps=w, num_stages=s)
    for bs in (16, 32, 64, 128)
    for ck in (32, 64)
    for w in (4, 8)
    for s in (1, 2)
]
# Kernel 2: BLOCK_K = 128 spills registers with BLOCK_N = 256 on sm_90 (checked with cuobjdump).
OUT_CONFIGS = [
    triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bk in (32, 64)
    for w in (4, 8)
    for s in (2, 3, 4)
]
# Under TRITON_INTERPRET=1 one config each (tuning in the interpreter only slows CI); BLOCK_S = 32 < 49
# bins, so the interpreted tests run several row tiles per proposal, a partial one included.
INTERPRET_BINS_CONFIGS = [triton.Config({"BLOCK_S": 32, "BLOCK_CK": 32}, num_warps=4)]
INTERPRET_OUT_CONFIGS = [triton.Config({"BLOCK_K": 32}, num_warps=4, num_stages=1)]
OUT_BLOCK_M = (64, 32, 16)  # proposals per program of kernel 2, largest first


def pow2(n: int, floor: int = 16) -> int:
    """The padded tile side of a size n: a power of two, >= floor (tl.dot needs 16)."""
    return max(floor, triton.next_power_of_2(n))


def fits_registers(cfg: triton.Config, rows: int, cols: int) -> bool:
    """Whether a [rows, cols] fp32 tile leaves room in registers at cfg's num_warps."""
    return rows * cols <= ACC_REGISTERS * 32 * cfg.num_warps


def bins_shared_memory(
    block_s: int, block_c: int, block_d: int, block_ck: int, num_stages: int, elem_size: int
) -> int:
    """Upper estimate of kernel 1's shared memory in bytes: the first GEMM's operand tiles (roi
    [BLOCK_S, BLOCK_CK], P1 [BLOCK_CK, BLOCK_D]) times the pipeline stages, the second GEMM's
    (F1 [BLOCK_S, BLOCK_D], P2 [BLOCK_D, BLOCK_C]) and the fp32 [BLOCK_S, BLOCK_C] tile of LN_C."""
    gemm1 = max(num_stages, 1) * (block_s * block_ck + block_ck * block_d) * elem_size
    gemm2 = (block_s * block_d + block_d * block_c) * elem_size
    return gemm1 + gemm2 + block_s * block_c * 4


def out_shared_memory(block_m: int, block_n: int, block_k: int, num_stages: int, elem_size: int) -> int:
    """Upper estimate of kernel 2's shared memory in bytes: feat [BLOCK_M, BLOCK_K] and W^T [BLOCK_K,
    BLOCK_N] times the pipeline stages, and the fp32 [BLOCK_M, BLOCK_N] tile of the LN_C epilogue."""
    return max(num_stages, 1) * (block_m + block_n) * block_k * elem_size + block_m * block_n * 4


def keep_bins_configs(
    configs: list[triton.Config], *, s2: int, c: int, d: int, elem_size: int, budget: int
) -> list[triton.Config]:
    """Kernel 1's configs that fit registers and ``budget`` bytes of shared memory, at the largest
    BLOCK_S (<= the padded S2) any of them reaches; empty when none fits."""
    block_c, block_d, whole = pow2(c), pow2(d), pow2(s2)
    fits = [
        cfg
        for cfg in configs
        if cfg.kwargs["BLOCK_S"] <= whole
        and fits_registers(cfg, cfg.kwargs["BLOCK_S"], block_c)
        and bins_shared_memory(
            cfg.kwargs["BLOCK_S"], block_c, block_d, cfg.kwargs["BLOCK_CK"], cfg.num_stages, elem_size
        )
        <= budget
    ]
    best = max((cfg.kwargs["BLOCK_S"] for cfg in fits), default=0)
    return [cfg for cfg in fits if cfg.kwargs["BLOCK_S"] == best]


def keep_out_configs(
    configs: list[triton.Config], *, block_m: int, c: int, elem_size: int, budget: int
) -> list[triton.Config]:
    """Kernel 2's configs that fit registers and ``budget`` bytes of shared memory (maybe none)."""
    block_n = pow2(c)
    return [
        cfg
        for cfg in configs
        if fits_registers(cfg, block_m, block_n)
        and out_shared_memory(block_m, block_n, cfg.kwargs["BLOCK_K"], cfg.num_stages, elem_size) <= budget
    ]


def out_block_m(c: int, elem_size: int, budget: int) -> int | None:
    """The largest BLOCK_M of kernel 2 with a config that fits, or None."""
    for block_m in OUT_BLOCK_M:
        if keep_out_configs(OUT_CONFIGS, block_m=block_m, c=c, elem_size=elem_size, budget=budget):
            return block_m
    return None


def kernels_fit(s2: int, c: int, d: int, elem_size: int, budget: int | None) -> bool:
    """Whether both kernels have a config for this shape within ``budget`` bytes (None: no limit, as
    in the interpreter)."""
    if budget is None:
        return True
    bins = keep_bins_configs(BINS_CONFIGS, s2=s2, c=c, d=d, elem_size=elem_size, budget=budget)
    return bool(bins) and out_block_m(c, elem_size, budget) is not None


@functools.cache
def shared_memory_budget(device: torch.device) -> int | None:
    """Shared memory per block (opt-in) of a CUDA device in bytes, as Triton checks it; None on CPU."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except (AttributeError, ImportError, KeyError, RuntimeError, TypeError):  # a Triton without that query
        return HOPPER_SHARED_MEMORY
