"""Triton kernels for DiffusionDet's instance interaction (DynamicConv, REFERENCE.md §2).

Math, for every proposal k (S2 bins, C channels, D dynamic channels; flatten index = bin * C + channel)::

    P1 = params[k, :C*D].view(C, D)        P2 = params[k, C*D:].view(D, C)
    F1 = ReLU(LN_D(roi[k] @ P1))            # [S2, D]
    F2 = ReLU(LN_C(F1 @ P2))                # [S2, C]  -> feat[k, s*C + c]
    y[k] = ReLU(LN_C(W @ feat[k] + b))      # [C]

Two launches (three with split-K):

1. ``_dynamic_conv_bins_kernel``: one program per (proposal, tile of BLOCK_S bins). Both small GEMMs,
   their LayerNorms and ReLUs stay on chip (every bin row is independent); C and D are padded to
   powers of two, and BLOCK_S (>= 16, a power of two) is the whole padded S2 when its tiles fit, less
   for large C. The first GEMM loops over C in BLOCK_CK chunks; the second produces whole [BLOCK_S,
   BLOCK_C] rows so LN_C sees full rows. Writes feat [K, S2*C] in the input dtype.
2. ``_dynamic_conv_out_kernel``: feat @ W^T tiled as [BLOCK_M proposals, BLOCK_N >= C channels], the
   reduction over S2*C split into SPLIT_K ranges. With SPLIT_K == 1 the bias, LN_C and ReLU run in its
   epilogue; otherwise it writes fp32 partial sums [SPLIT_K, K, C] and ``_dynamic_conv_epilogue_kernel``
   reduces them in a fixed order (deterministic, no atomics) and applies bias, LN_C and ReLU.

Pointers and layouts (strides are passed for every strided operand; innermost stride 1 except roi):
    roi [K, S2, C] any strides (e.g. the [K, C, 7, 7] RoIAlign output viewed bin-major, no copy);
    params [K, 2*C*D] (P1 row-major [C, D] then P2 row-major [D, C]);
    norm1_* [D]; norm2_*, out_bias, norm3_* [C] contiguous; out_weight [C, S2*C];
    feat [K, S2*C] contiguous (written by 1, read by 2); partial [SPLIT_K, K, C] fp32; y [K, C].

Dtype policy: loads fp32, bf16 or fp16; tl.dot accumulates in fp32 (fp32 inputs use IEEE fp32
products, not TF32, so fp32 agrees with PyTorch to ~1e-5); LayerNorm statistics in fp32; operands of
the second GEMM and feat are rounded to the input dtype (where eager PyTorch rounds); y is stored in
the input dtype. Under TRITON_INTERPRET=1 (CPU tests) bf16/fp16 operands are multiplied as fp32
(DOT_FP32): the products are exact either way, and the interpreter multiplies the raw bit patterns
of bf16 tl.dot operands (triton-lang/triton#11584).

Limits: the [BLOCK_S, BLOCK_C] fp32 tile of the second GEMM and the [BLOCK_M, BLOCK_N] accumulator
live in registers, and P2 [BLOCK_D, BLOCK_C] and the pipelined tiles in shared memory. The configs
are pruned per shape by register and shared-memory estimates (``_dynamic_conv_tiles``): larger C
take smaller BLOCK_S and BLOCK_M. A shape no config fits on the device (:func:`kernels_fit`; with
D = 64 and S2 = 49 on an H100/H200, 227 KiB per block: C > 512 in fp32, C > 1024 in bf16/fp16) is not
run here: ``diffdet.ops.dynamic_conv`` runs the reference for it. Any K. Deterministic. Both GEMM
kernels autotune on their first call for a new key, which launches them repeatedly: make that first
call before capturing a CUDA graph. Launches run on the tensors' device (``_device.on_device``), not
the current one. Backward is not a kernel: ``diffdet.ops.dynamic_conv`` recomputes the intermediates
in PyTorch. Split-K is chosen on the host so that roughly one program per SM is in flight.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _device
from ._dynamic_conv_tiles import (
    BINS_CONFIGS,
    INTERPRET_BINS_CONFIGS,
    INTERPRET_OUT_CONFIGS,
    OUT_CONFIGS,
    keep_bins_configs,
    keep_out_configs,
    kernels_fit,
    out_block_m,
    pow2,
    shared_memory_budget,
)

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Kernel 1: the winner depends on the tile sizes only (set by C, D, S2). Kernel 2: K (as a power-of-two
# bucket) and SPLIT_K change the number of programs, hence the winner.
_BINS_CONFIGS = INTERPRET_BINS_CONFIGS if _INTERPRET else BINS_CONFIGS
_OUT_CONFIGS = INTERPRET_OUT_CONFIGS if _INTERPRET else OUT_CONFIGS

__all__ = ["dynamic_conv_fwd", "kernels_fit"]


def _keep_bins_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotuner hook: kernel 1's configs that fit this device (non-empty: the host checked kernels_fit)."""
    roi = named_args["roi_ptr"]
    return keep_bins_configs(
        configs,
        s2=named_args["S2"],
        c=named_args["C"],
        d=named_args["D"],
        elem_size=roi.element_size(),
        budget=shared_memory_budget(roi.device),
    )


def _keep_out_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotuner hook: kernel 2's configs that fit this device at the launch's BLOCK_M."""
    feat = named_args["feat_ptr"]
    return keep_out_configs(
        configs,
        block_m=kwargs["BLOCK_M"],
        c=named_args["C"],
        elem_size=feat.element_size(),
        budget=shared_memory_budget(feat.device),
    )


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc + a @ b with fp32 accumulation; DOT_FP32 multiplies bf16/fp16 operands as fp32 (exact)."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE or DOT_FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _ln_relu(x, mask, n, w, b, eps):
    """Row LayerNorm over the masked columns (fp32 statistics), affine, ReLU; padding stays 0."""
    mean = tl.sum(x, axis=1) / n
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / n + eps)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    return tl.where(mask, tl.maximum(y, 0.0), 0.0)


@triton.autotune(
    configs=_BINS_CONFIGS, key=["S2", "C", "D"], prune_configs_by={"early_config_prune": _keep_bins_configs}
)
@triton.jit
def _dynamic_conv_bins_kernel(
    # pointers
    roi_ptr,
    params_ptr,
    n1w_ptr,
    n1b_ptr,
    n2w_ptr,
    n2b_ptr,
    feat_ptr,
    # sizes
    S2,
    C,
    D,
    eps,
    # strides
    stride_rk,
    stride_rs,
    stride_rc,
    stride_pk,
    # meta-parameters
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_CK: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    tl.static_assert(BLOCK_S >= 16 and BLOCK_D >= 16 and BLOCK_CK >= 16, "tl.dot needs tiles >= 16")
    k = tl.program_id(0).to(tl.int64)
    dtype = roi_ptr.dtype.element_ty
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)  # this program's bins
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    mask_s = offs_s < S2
    mask_d = offs_d < D
    mask_c = offs_c < C
    roi_base = roi_ptr + k * stride_rk
    p_base = params_ptr + k * stride_pk

    # F1 = roi @ P1, reduced over C in BLOCK_CK chunks: [BLOCK_S, BLOCK_D] fp32.
    acc1 = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_CK):
        offs_ck = c0 + tl.arange(0, BLOCK_CK)
        mask_ck = offs_ck < C
        a = tl.load(
            roi_base + offs_s[:, None] * stride_rs + offs_ck[None, :] * stride_rc,
            mask=mask_s[:, None] & mask_ck[None, :],
            other=0.0,
        )
        p1 = tl.load(
            p_base + offs_ck[:, None] * D + offs_d[None, :],
            mask=mask_ck[:, None] & mask_d[None, :],
            other=0.0,
        )
        acc1 = _dot(a, p1, acc1, IEEE, DOT_FP32)
    n1w = tl.load(n1w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    n1b = tl.load(n1b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    f1 = _ln_relu(acc1, mask_d[None, :], D, n1w, n1b, eps).to(dtype)  # [BLOCK_S, BLOCK_D]

    # F2 = F1 @ P2: [BLOCK_S, BLOCK_C] fp32, whole rows for LN_C.
    p2 = tl.load(
        p_base + C * D + offs_d[:, None] * C + offs_c[None, :],
        mask=mask_d[:, None] & mask_c[None, :],
        other=0.0,
    )
    acc2 = _dot(f1, p2, tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32), IEEE, DOT_FP32)
    n2w = tl.load(n2w_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    n2b = tl.load(n2b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    f2 = _ln_relu(acc2, mask_c[None, :], C, n2w, n2b, eps)
    feat = feat_ptr + k * S2 * C + offs_s[:, None] * C + offs_c[None, :]  # bin-major flatten
    tl.store(feat, f2.to(dtype), mask=mask_s[:, None] & mask_c[None, :])


@triton.autotune(
    configs=_OUT_CONFIGS,
    key=["K_BUCKET", "N_IN", "C", "SPLIT_K"],
    prune_configs_by={"early_config_prune": _keep_out_configs},
)
@triton.heuristics(
    {
        # Every split range is whole BLOCK_K chunks when BLOCK_K divides S2*C (12544 = 196 * 64).
        "EVEN_K": lambda args: args["N_IN"] % args["BLOCK_K"] == 0,
        "EVEN_N": lambda args: args["C"] == args["BLOCK_N"],
    }
)
@triton.jit
def _dynamic_conv_out_kernel(
    # pointers
    feat_ptr,
    w_ptr,
    bias_ptr,
    n3w_ptr,
    n3b_ptr,
    y_ptr,
    partial_ptr,
    # sizes
    K,
    N_IN,
    C,
    K_BUCKET,
    eps,
    # strides
    stride_wc,
    # meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    EVEN_K: tl.constexpr,
    EVEN_N: tl.constexpr,
):
    tl.static_assert(BLOCK_N >= 16 and BLOCK_M >= 16 and BLOCK_K >= 16, "tl.dot needs tiles >= 16")
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < K
    mask_n = offs_n < C
    # This program reduces feat columns [k_lo, k_hi), a whole number of BLOCK_K chunks.
    chunk = tl.cdiv(tl.cdiv(N_IN, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = pid_k * chunk
    k_hi = tl.minimum(k_lo + chunk, N_IN)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_hi
        a_ptrs = feat_ptr + offs_m[:, None] * N_IN + offs_k[None, :]
        b_ptrs = w_ptr + offs_n[None, :] * stride_wc + offs_k[:, None]  # W^T tile [BLOCK_K, BLOCK_N]
        if EVEN_K and EVEN_N:  # the masked W^T load costs ~100 bytes of register spill per thread
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0.0)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=mask_n[None, :] & mask_k[:, None], other=0.0)
        acc = _dot(a, b, acc, IEEE, DOT_FP32)
    if SPLIT_K == 1:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        n3w = tl.load(n3w_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        n3b = tl.load(n3b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        y = _ln_relu(acc + bias[None, :], mask_n[None, :], C, n3w, n3b, eps)
        out = y_ptr + offs_m[:, None] * C + offs_n[None, :]
        tl.store(out, y.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    else:
        out = partial_ptr + (pid_k * K + offs_m[:, None]) * C + offs_n[None, :]
        tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _dynamic_conv_epilogue_kernel(
    # pointers
    partial_ptr,
    bias_ptr,
    n3w_ptr,
    n3b_ptr,
    y_ptr,
    # sizes
    K,
    C,
    eps,
    # meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_m < K)[:, None] & (offs_n < C)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(SPLIT_K):  # fixed order: deterministic
        acc += tl.load(partial_ptr + (s * K + offs_m[:, None]) * C + offs_n[None, :], mask=mask, other=0.0)
    mask_n = offs_n < C
    bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    n3w = tl.load(n3w_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    n3b = tl.load(n3b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    y = _ln_relu(acc + bias[None, :], mask_n[None, :], C, n3w, n3b, eps)
    tl.store(y_ptr + offs_m[:, None] * C + offs_n[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def default_split_k(num_tiles: int, device: torch.device) -> int:
    """Split-K factor that puts about one program per SM in flight (1 on the CPU interpreter)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(16, round(sms / num_tiles)))


def dynamic_conv_fwd(
    roi: torch.Tensor,
    params: torch.Tensor,
    norm1_weight: torch.Tensor,
    norm1_bias: torch.Tensor,
    norm2_weight: torch.Tensor,
    norm2_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    norm3_weight: torch.Tensor,
    norm3_bias: torch.Tensor,
    eps: float,
    *,
    split_k: int | None = None,
    block_m: int | None = None,
) -> torch.Tensor:
    """Launch the forward kernels on validated tensors (layouts as in the module docstring).

    Args:
        roi ... norm3_bias: as ``diffdet.ops.dynamic_conv``; one dtype (fp32/bf16/fp16), one device;
            roi any strides; inner strides of params and out_weight equal 1; 1-d tensors contiguous.
        eps: LayerNorm epsilon.
        split_k: split of the S2*C reduction of the output Linear; None picks one per device.
        block_m: proposals per program of the output Linear (>= 16, a power of two); None picks the
            largest whose tiles fit the device (64 for C <= 256).

    The shape must fit the device (:func:`kernels_fit`), as ``diffdet.ops.dynamic_conv`` checks.

    Returns:
        Tensor[K, C] in roi's dtype.
    """
    k, s2, c = roi.shape
    d = norm1_weight.shape[0]
    y = torch.empty((k, c), device=roi.device, dtype=roi.dtype)
    if k == 0:
        return y
    ieee = roi.dtype == torch.float32
    feat = torch.empty((k, s2 * c), device=roi.device, dtype=roi.dtype)
    if block_m is None:
        budget = shared_memory_budget(roi.device)
        block_m = 64 if budget is None else out_block_m(c, roi.element_size(), budget)
    num_tiles = triton.cdiv(k, block_m)
    split = default_split_k(num_tiles, roi.device) if split_k is None else split_k
    partial = torch.empty((split, k, c), device=roi.device, dtype=torch.float32) if split > 1 else y
    with _device.on_device(roi.device):  # Triton launches on the current device, not the tensors'
        _dynamic_conv_bins_kernel[lambda meta: (k, triton.cdiv(s2, meta["BLOCK_S"]))](
            roi, params, norm1_weight, norm1_bias, norm2_weight, norm2_bias, feat,
            s2, c, d, eps,
            roi.stride(0), roi.stride(1), roi.stride(2), params.stride(0),
            BLOCK_C=pow2(c), BLOCK_D=pow2(d), IEEE=ieee, DOT_FP32=_INTERPRET,
        )  # fmt: skip
        _dynamic_conv_out_kernel[(num_tiles, split)](
            feat, out_weight, out_bias, norm3_weight, norm3_bias, y, partial,
            k, s2 * c, c, triton.next_power_of_2(k), eps,
            out_weight.stride(0),
            BLOCK_M=block_m, BLOCK_N=pow2(c), SPLIT_K=split, IEEE=ieee, DOT_FP32=_INTERPRET,
        )  # fmt: skip
        if split > 1:
            _dynamic_conv_epilogue_kernel[(triton.cdiv(k, 16),)](
                partial, out_bias, norm3_weight, norm3_bias, y,
                k, c, eps,
                BLOCK_M=16, BLOCK_N=pow2(c), SPLIT_K=split,
            )  # fmt: skip
    return y
