"""Triton kernel for one DDIM sampling step with box renewal (REFERENCE.md §4), one launch per batch.

Math, per image b, with the coefficients r = sqrt(1/a), rm1 = sqrt(1/a - 1), sqrt(a'), c and sigma
computed on the host in float64 (``diffdet.ops.ddim_renewal_step.schedule_coefficients``)::

    x0[i]   = clamp((xyxy_to_cxcywh(pred_boxes[b, i] / whwh[b]) * 2 - 1) * scale, -scale, scale)
    eps[i]  = (r * img[b, i] - x0[i]) / rm1
    keep[i] = sigmoid(max_k logits[b, i, k]) > threshold       (all True without RENEWAL)
    dest[i] = #kept proposals before i                          (stable compaction)
    next_img[b, dest[i]] = x0[i] * sqrt(a') + c * eps[i] + sigma * ddim_noise[b, dest[i]]   for kept i
    next_img[b, j]       = refill_noise[b, j]                   for j >= n_b = #kept
    next_boxes[b, j]     = cxcywh_to_xyxy((clamp(next_img[b, j], -scale, scale) / scale + 1) / 2) * whwh[b]
    num_kept[b]          = n_b

One program per image walks its P proposals in BLOCK_P tiles (one tile for P <= 1024), carrying the
running kept count, so the compaction needs no second launch and no host sync; a second pass over the
same image writes the refill slots. The launch is CUDA-graph capturable (no allocation or host read inside).

Pointers and layouts (innermost stride 1 for boxes and logits): img, pred_boxes, ddim_noise,
refill_noise [B, P, 4] with strides (stride_b, 4, 1) given per tensor; pred_logits [B, P, NCLS] with
strides (stride_lb, stride_lp, 1); whwh [B, 4] contiguous; outputs next_img [B, P, 4] float64,
next_boxes [B, P, 4] (pred_boxes' dtype), num_kept [B] int64, all contiguous.

Dtype policy: loads fp64/fp32/bf16/fp16; computes in fp32 (the reference computes eps and the DDIM
sum in float64 as the published code does, so results agree to fp32 rounding, ~1e-6 relative); stores
next_img as float64 and next_boxes in pred_boxes' dtype. The keep test rounds sigmoid to the logits'
dtype before comparing, as ``torch.sigmoid(logits) > threshold`` does; a score within one ulp of the
threshold may still be decided differently. NaN propagates as in the reference (``torch.clamp`` and
``amax`` propagate it): every min/max here is NaN-propagating (``_clamp``, ``_max_nan``), where
``tl.minimum``/``tl.maximum``/``tl.max`` by default return the other operand on the GPU. A NaN box or
image coordinate gives NaN outputs; a NaN logit makes the proposal's score NaN, so it is not kept.
Limits: any B, P and NCLS. Deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _device


@triton.jit
def _clamp(x, lo, hi):
    """torch.clamp(x, lo, hi): NaN stays NaN (the default tl.minimum/maximum would drop it on a GPU)."""
    x = tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(x, hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _max_nan(a, b):
    """Combine function of a NaN-propagating max reduction (torch.amax semantics)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _boxes_from_img(cx, cy, w, h, img_w, img_h, scale):
    """Diffusion-space cxcywh -> xyxy absolute pixels (clamp, /scale, +1, /2, * whwh)."""
    cx = (_clamp(cx, -scale, scale) / scale + 1) / 2
    cy = (_clamp(cy, -scale, scale) / scale + 1) / 2
    w = (_clamp(w, -scale, scale) / scale + 1) / 2
    h = (_clamp(h, -scale, scale) / scale + 1) / 2
    return (cx - 0.5 * w) * img_w, (cy - 0.5 * h) * img_h, (cx + 0.5 * w) * img_w, (cy + 0.5 * h) * img_h


@triton.jit
def _ddim_update(v, img_ptrs, z_ptrs, mask, scale, sqrt_recip, sqrt_recipm1, sqrt_alpha_next, c, sigma):
    """One coordinate: x0 from the normalised predicted value v, eps from img, the DDIM update."""
    x0 = _clamp((v * 2 - 1) * scale, -scale, scale)
    cur = tl.load(img_ptrs, mask=mask, other=0.0).to(tl.float32)
    eps = (sqrt_recip * cur - x0) / sqrt_recipm1  # DDIM Eq. 12 solved for eps; img unclamped
    z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
    return x0 * sqrt_alpha_next + c * eps + sigma * z  # DDIM Eq. 12


@triton.jit
def _store_box(ptr, row, mask, v0, v1, v2, v3):
    """Store the 4 coordinates of boxes ``row`` into a contiguous [*, 4] tensor."""
    dtype = ptr.dtype.element_ty
    tl.store(ptr + row * 4 + 0, v0.to(dtype), mask=mask)
    tl.store(ptr + row * 4 + 1, v1.to(dtype), mask=mask)
    tl.store(ptr + row * 4 + 2, v2.to(dtype), mask=mask)
    tl.store(ptr + row * 4 + 3, v3.to(dtype), mask=mask)


@triton.jit
def _ddim_renewal_step_kernel(
    # pointers
    img_ptr,
    boxes_ptr,
    logits_ptr,
    whwh_ptr,
    ddim_noise_ptr,
    refill_noise_ptr,
    next_img_ptr,
    next_boxes_ptr,
    num_kept_ptr,
    # sizes
    P,
    NCLS,
    # scalars (host float64, passed as fp32)
    sqrt_recip,
    sqrt_recipm1,
    sqrt_alpha_next,
    c,
    sigma,
    scale,
    threshold,
    # strides
    stride_ib,
    stride_bb,
    stride_lb,
    stride_lp,
    stride_db,
    stride_rb,
    # meta-parameters
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    RENEWAL: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    img_w = tl.load(whwh_ptr + b * 4 + 0).to(tl.float32)
    img_h = tl.load(whwh_ptr + b * 4 + 1).to(tl.float32)
    out_base = b * P  # row offset of image b in the contiguous outputs
    kept = tl.zeros((), dtype=tl.int32)
    for p0 in range(0, P, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        valid = offs < P
        if RENEWAL:
            best = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
            for k0 in range(0, NCLS, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                tile = tl.load(
                    logits_ptr + b * stride_lb + offs[:, None] * stride_lp + offs_k[None, :],
                    mask=valid[:, None] & (offs_k < NCLS)[None, :],
                    other=float("-inf"),
                )
                best = _max_nan(best, tl.reduce(tile.to(tl.float32), 1, _max_nan))
            # max of sigmoid == sigmoid of max (monotonic); round to the logits' dtype like torch.sigmoid.
            score = tl.sigmoid(best).to(logits_ptr.dtype.element_ty).to(tl.float32)
            keep = valid & (score > threshold)
        else:
            keep = valid
        dest = kept + tl.cumsum(keep.to(tl.int32), axis=0) - 1  # stable: kept boxes keep their order
        kept += tl.sum(keep.to(tl.int32), axis=0)

        # x0 from the predicted xyxy boxes (normalised cxcywh, *2-1, *scale, clamp).
        bx = boxes_ptr + b * stride_bb + offs * 4
        x0a = tl.load(bx + 0, mask=keep, other=0.0).to(tl.float32) / img_w
        y0a = tl.load(bx + 1, mask=keep, other=0.0).to(tl.float32) / img_h
        x1a = tl.load(bx + 2, mask=keep, other=0.0).to(tl.float32) / img_w
        y1a = tl.load(bx + 3, mask=keep, other=0.0).to(tl.float32) / img_h
        src = img_ptr + b * stride_ib + offs * 4
        zp = ddim_noise_ptr + b * stride_db + dest * 4
        n0 = _ddim_update(
            (x0a + x1a) / 2, src + 0, zp + 0, keep, scale, sqrt_recip, sqrt_recipm1, sqrt_alpha_next, c, sigma
        )
        n1 = _ddim_update(
            (y0a + y1a) / 2, src + 1, zp + 1, keep, scale, sqrt_recip, sqrt_recipm1, sqrt_alpha_next, c, sigma
        )
        n2 = _ddim_update(
            x1a - x0a, src + 2, zp + 2, keep, scale, sqrt_recip, sqrt_recipm1, sqrt_alpha_next, c, sigma
        )
        n3 = _ddim_update(
            y1a - y0a, src + 3, zp + 3, keep, scale, sqrt_recip, sqrt_recipm1, sqrt_alpha_next, c, sigma
        )
        row = out_base + dest
        _store_box(next_img_ptr, row, keep, n0, n1, n2, n3)
        v0, v1, v2, v3 = _boxes_from_img(n0, n1, n2, n3, img_w, img_h, scale)
        _store_box(next_boxes_ptr, row, keep, v0, v1, v2, v3)

    # Refill: slots j >= kept take refill_noise[b, j].
    for p0 in range(0, P, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        fill = (offs < P) & (offs >= kept)
        rn = refill_noise_ptr + b * stride_rb + offs * 4
        cx = tl.load(rn + 0, mask=fill, other=0.0).to(tl.float32)
        cy = tl.load(rn + 1, mask=fill, other=0.0).to(tl.float32)
        w = tl.load(rn + 2, mask=fill, other=0.0).to(tl.float32)
        h = tl.load(rn + 3, mask=fill, other=0.0).to(tl.float32)
        row = out_base + offs
        _store_box(next_img_ptr, row, fill, cx, cy, w, h)
        v0, v1, v2, v3 = _boxes_from_img(cx, cy, w, h, img_w, img_h, scale)
        _store_box(next_boxes_ptr, row, fill, v0, v1, v2, v3)
    tl.store(num_kept_ptr + b, kept.to(tl.int64))


def ddim_renewal_step_fwd(
    img: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_logits: torch.Tensor,
    image_whwh: torch.Tensor,
    ddim_noise: torch.Tensor,
    refill_noise: torch.Tensor,
    *,
    sqrt_recip: float,
    sqrt_recipm1: float,
    sqrt_alpha_next: float,
    c: float,
    sigma: float,
    scale: float,
    threshold: float,
    renewal: bool,
    block_p: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the step on validated tensors (layouts in the module docstring; innermost strides 1).

    Args:
        img, pred_boxes, pred_logits, image_whwh, ddim_noise, refill_noise: as
            ``diffdet.ops.ddim_renewal_step``; one device; boxes/noise [B, P, 4] with strides (*, 4, 1),
            logits [B, P, NCLS] with last stride 1, image_whwh contiguous.
        sqrt_recip, sqrt_recipm1, sqrt_alpha_next, c, sigma: DDIM coefficients (host float64).
        scale: signal scale of the diffusion space.
        threshold: renewal threshold, already rounded to the logits' dtype.
        renewal: False keeps every box.
        block_p: proposals per tile (a power of two >= 16); None picks one (a whole image up to 1024).

    Returns:
        (next_img [B, P, 4] float64, next_boxes [B, P, 4] pred_boxes' dtype, num_kept [B] int64).
    """
    b, p, ncls = pred_logits.shape
    next_img = torch.empty((b, p, 4), device=img.device, dtype=torch.float64)
    next_boxes = torch.empty((b, p, 4), device=img.device, dtype=pred_boxes.dtype)
    num_kept = torch.empty((b,), device=img.device, dtype=torch.int64)
    if b == 0:
        return next_img, next_boxes, num_kept
    # A whole image per tile up to 1024 proposals (one pass, no loop-carried latency); the class loop
    # keeps the logits tile at <= 16K elements.
    if block_p is None:
        block_p = min(1024, max(16, triton.next_power_of_2(p)))
    block_k = max(16, min(triton.next_power_of_2(ncls), 16384 // block_p))
    with _device.on_device(img.device):  # Triton launches on the current device, not the tensors'
        _ddim_renewal_step_kernel[(b,)](
            img, pred_boxes, pred_logits, image_whwh, ddim_noise, refill_noise,
            next_img, next_boxes, num_kept,
            p, ncls,
            sqrt_recip, sqrt_recipm1, sqrt_alpha_next, c, sigma, scale, threshold,
            img.stride(0), pred_boxes.stride(0), pred_logits.stride(0), pred_logits.stride(1),
            ddim_noise.stride(0), refill_noise.stride(0),
            BLOCK_P=block_p, BLOCK_K=block_k, RENEWAL=renewal, num_warps=8 if block_p >= 512 else 4,
        )  # fmt: skip
    return next_img, next_boxes, num_kept
