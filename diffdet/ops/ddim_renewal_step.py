"""``ddim_renewal_step``: one DDIM update with box renewal between two head calls (REFERENCE.md §4).

Per image b, with a = alphas_cumprod[t], a' = alphas_cumprod[t_next] (published ``ddim_sample`` and
``model_predictions``)::

    x0    = clamp((xyxy_to_cxcywh(pred_boxes / whwh) * 2 - 1) * scale, -scale, scale)
    eps   = (sqrt(1/a) * img - x0) / sqrt(1/a - 1)                 # img unclamped (DDIM Eq. 12 inverted)
    keep  = max_k sigmoid(pred_logits) > renewal_threshold          # per image
    sigma = eta * sqrt((1 - a/a') * (1 - a') / (1 - a));  c = sqrt(1 - a' - sigma^2)   # DDIM Eq. 16
    slot j < n_b (n_b = #kept):  next_img[j] = x0[i_j] * sqrt(a') + c * eps[i_j] + sigma * ddim_noise[j]
    slot j >= n_b:               next_img[j] = refill_noise[j]
    next_boxes = cxcywh_to_xyxy((clamp(next_img, -scale, scale) / scale + 1) / 2) * whwh

where i_0 < i_1 < ... are the kept proposals in their original order. The published code computes keep
from image 0 only and applies it to every image (it only runs batch 1 for steps > 1); here each image
has its own mask, which is identical at batch 1.

Dtypes follow the published code's type promotion exactly: the schedule buffers are float64 tensors of
shape [B, 1, 1], so eps is float64; x0 is float32 (from the head) and ``x0 * sqrt(a')`` stays float32;
``sigma * z`` has z's dtype; the sum and the concatenated refill are float64. ``next_img`` is therefore
always float64. ``next_boxes`` is cast to ``pred_boxes.dtype``, the cast the head applies to its input
boxes (ROIAlign and ``apply_deltas`` both cast), so the next head call sees the same numbers.

Backends: CUDA tensors run the Triton kernel of :mod:`diffdet.kernels.ddim_renewal_step` (one launch,
no host sync, CUDA-graph capturable; it computes in fp32 and stores float64, so it agrees with the
reference to fp32 rounding); CPU tensors run :func:`_ddim_renewal_step_torch`, a vectorised, sync-free
transcription that is bit-identical to :func:`ddim_renewal_step_reference`.
"""

from __future__ import annotations

import math

import torch

from diffdet.ops import _backend
from diffdet.ops._checks import (
    check_dtype,
    check_floating,
    check_positive,
    check_same_device,
    check_shape,
    check_tensor,
)

PREFERRED = {"cuda": "triton"}


def schedule_coefficients(alpha: float, alpha_next: float, eta: float) -> tuple[float, float, float, float]:
    """DDIM coefficients for the step a -> a' in Python float64 (bit-identical to the published 0-dim math).

    Returns:
        (sqrt(1/a), sqrt(1/a - 1), sigma, c) with sigma = eta * sqrt((1 - a/a')(1 - a')/(1 - a)) and
        c = sqrt(1 - a' - sigma^2) (DDIM Eq. 16; ``sigma ** 2`` is evaluated as ``sigma * sigma``, which
        is what torch's ``pow(x, 2)`` computes).
    """
    sigma = eta * math.sqrt((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha))
    c = math.sqrt(1 - alpha_next - sigma * sigma)
    return math.sqrt(1.0 / alpha), math.sqrt(1.0 / alpha - 1), sigma, c


def _check(
    img: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_logits: torch.Tensor,
    image_whwh: torch.Tensor,
    ddim_noise: torch.Tensor,
    refill_noise: torch.Tensor,
    alpha: float,
    alpha_next: float,
    eta: float,
    scale: float,
) -> None:
    """Validate shapes, dtypes, devices (metadata only) and the schedule values."""
    for name, x in (
        ("img", img),
        ("pred_boxes", pred_boxes),
        ("pred_logits", pred_logits),
        ("image_whwh", image_whwh),
        ("ddim_noise", ddim_noise),
        ("refill_noise", refill_noise),
    ):
        check_tensor(name, x)
    check_shape("img", img, (None, None, 4))
    b, p, _ = img.shape
    for name, x in (("pred_boxes", pred_boxes), ("ddim_noise", ddim_noise), ("refill_noise", refill_noise)):
        check_shape(name, x, (b, p, 4))
    check_shape("pred_logits", pred_logits, (b, p, None))
    if pred_logits.shape[2] < 1:
        raise ValueError(f"pred_logits must have at least one class, got {tuple(pred_logits.shape)}")
    check_shape("image_whwh", image_whwh, (b, 4))
    check_dtype("img", img, (torch.float32, torch.float64))
    for name, x in (
        ("pred_boxes", pred_boxes),
        ("pred_logits", pred_logits),
        ("image_whwh", image_whwh),
        ("ddim_noise", ddim_noise),
        ("refill_noise", refill_noise),
    ):
        check_floating(name, x)
    check_same_device(
        {
            "img": img,
            "pred_boxes": pred_boxes,
            "pred_logits": pred_logits,
            "image_whwh": image_whwh,
            "ddim_noise": ddim_noise,
            "refill_noise": refill_noise,
        }
    )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not alpha <= alpha_next <= 1:
        raise ValueError(f"alpha_next must be in [alpha, 1] = [{alpha}, 1], got {alpha_next}")
    check_positive("eta", eta, allow_zero=True)
    check_positive("scale", scale)
    sigma = eta * math.sqrt((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha))
    if 1 - alpha_next - sigma * sigma < 0:
        raise ValueError(f"eta={eta} makes sigma^2 exceed 1 - alpha_next (= {1 - alpha_next})")


def _xyxy_to_cxcywh(x: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0), (y1 - y0)], dim=-1)


def _cxcywh_to_xyxy(x: torch.Tensor) -> torch.Tensor:
    xc, yc, w, h = x.unbind(-1)
    return torch.stack([(xc - 0.5 * w), (yc - 0.5 * h), (xc + 0.5 * w), (yc + 0.5 * h)], dim=-1)


def _x0_eps(
    img: torch.Tensor, pred_boxes: torch.Tensor, image_whwh: torch.Tensor, alpha: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 (pred_boxes' dtype) and eps (float64) for every proposal, as ``model_predictions`` computes them."""
    b = img.shape[0]
    sqrt_recip, sqrt_recipm1, _, _ = schedule_coefficients(alpha, 1.0, 0.0)
    x0 = _xyxy_to_cxcywh(pred_boxes / image_whwh[:, None, :])
    x0 = torch.clamp((x0 * 2 - 1.0) * scale, min=-scale, max=scale)  # [B, P, 4] diffusion space
    # extract() gives [B, 1, 1] float64 buffers: a dimensioned float64 operand promotes img to float64.
    recip = torch.full((b, 1, 1), sqrt_recip, dtype=torch.float64, device=img.device)
    recipm1 = torch.full((b, 1, 1), sqrt_recipm1, dtype=torch.float64, device=img.device)
    eps = (recip * img - x0) / recipm1  # [B, P, 4] float64
    return x0, eps


def _boxes_from_img(
    img: torch.Tensor, image_whwh: torch.Tensor, scale: float, dtype: torch.dtype
) -> torch.Tensor:
    """Absolute xyxy boxes the next head call takes, cast to the head's box dtype."""
    x = (torch.clamp(img, min=-scale, max=scale) / scale + 1) / 2
    return (_cxcywh_to_xyxy(x) * image_whwh[:, None, :]).to(dtype)


def ddim_renewal_step_reference(
    img: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_logits: torch.Tensor,
    image_whwh: torch.Tensor,
    ddim_noise: torch.Tensor,
    refill_noise: torch.Tensor,
    *,
    alpha: float,
    alpha_next: float,
    eta: float = 1.0,
    scale: float = 2.0,
    renewal_threshold: float = 0.5,
    renewal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Literal transcription of the published step, one image at a time (boolean masks, ``cat``).

    Same arguments and results as :func:`ddim_renewal_step`; no input checks. Syncs with the host
    (data-dependent shapes); use it for parity, not speed.
    """
    p = img.shape[1]
    _, _, sigma, c = schedule_coefficients(alpha, alpha_next, eta)
    x_start, pred_noise = _x0_eps(img, pred_boxes, image_whwh, alpha, scale)
    imgs, kept = [], []
    for b in range(img.shape[0]):
        if renewal:
            value, _ = torch.max(torch.sigmoid(pred_logits[b]), -1, keepdim=False)
            keep_idx = value > renewal_threshold
        else:
            keep_idx = torch.ones(p, dtype=torch.bool, device=img.device)
        num_remain = int(torch.sum(keep_idx))
        noise = ddim_noise[b, :num_remain]
        new = x_start[b, keep_idx] * math.sqrt(alpha_next) + c * pred_noise[b, keep_idx] + sigma * noise
        imgs.append(torch.cat((new, refill_noise[b, num_remain:]), dim=0))
        kept.append(num_remain)
    next_img = torch.stack(imgs)  # [B, P, 4] float64
    num_kept = torch.tensor(kept, dtype=torch.int64, device=img.device)
    return next_img, _boxes_from_img(next_img, image_whwh, scale, pred_boxes.dtype), num_kept


def _ddim_renewal_step_torch(
    img: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_logits: torch.Tensor,
    image_whwh: torch.Tensor,
    ddim_noise: torch.Tensor,
    refill_noise: torch.Tensor,
    *,
    alpha: float,
    alpha_next: float,
    eta: float,
    scale: float,
    renewal_threshold: float,
    renewal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectorised, sync-free form of the reference: a stable partition replaces the boolean masks.

    Every slot computes the DDIM update from the kept proposal that lands there (or from proposal j
    itself when nothing lands there) and ``where`` picks the refill noise past the kept count. The
    elementwise expressions are the reference's, so the results are bit-identical.
    """
    b, p, _ = img.shape
    _, _, sigma, c = schedule_coefficients(alpha, alpha_next, eta)
    x_start, pred_noise = _x0_eps(img, pred_boxes, image_whwh, alpha, scale)
    if renewal:
        keep = torch.sigmoid(pred_logits).amax(dim=-1) > renewal_threshold  # [B, P]
    else:
        keep = torch.ones(b, p, dtype=torch.bool, device=img.device)
    num_kept = keep.sum(dim=1)  # [B] int64
    # Slot of each proposal: kept ones first, then the others, each in order (a stable partition, by
    # cumulative counts rather than a sort: no sort op, so the step exports to any ONNX runtime).
    kept_slot = torch.cumsum(keep, dim=1) - 1
    other_slot = num_kept[:, None] + torch.cumsum(~keep, dim=1) - 1
    slots = torch.where(keep, kept_slot, other_slot)  # [B, P], a permutation per image
    proposals = torch.arange(p, device=img.device).expand(b, p)
    order = torch.empty_like(slots).scatter_(1, slots, proposals)  # [B, P] proposal landing in each slot
    src = order[:, :, None].expand(b, p, 4)
    new = (
        torch.gather(x_start, 1, src) * math.sqrt(alpha_next)
        + c * torch.gather(pred_noise, 1, src)
        + sigma * ddim_noise
    )  # [B, P, 4] float64
    slot = torch.arange(p, device=img.device)
    next_img = torch.where((slot[None, :] < num_kept[:, None])[:, :, None], new, refill_noise)
    return next_img, _boxes_from_img(next_img, image_whwh, scale, pred_boxes.dtype), num_kept


def ddim_renewal_step(
    img: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_logits: torch.Tensor,
    image_whwh: torch.Tensor,
    ddim_noise: torch.Tensor,
    refill_noise: torch.Tensor,
    *,
    alpha: float,
    alpha_next: float,
    eta: float = 1.0,
    scale: float = 2.0,
    renewal_threshold: float = 0.5,
    renewal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DDIM step with box renewal and refill for a batch of images, without host sync.

    Args:
        img (Tensor[B, P, 4]): current boxes in diffusion space (normalised cxcywh * 2 - 1, * scale),
            unclamped; float32 or float64.
        pred_boxes (Tensor[B, P, 4]): last head stage's boxes, xyxy absolute pixels of the resized image.
        pred_logits (Tensor[B, P, K]): last head stage's class logits (sigmoid/focal, no background).
        image_whwh (Tensor[B, 4]): (w, h, w, h) of each resized image, pixels.
        ddim_noise (Tensor[B, P, 4]): z of the DDIM update; the kept box landing in slot j uses
            ``ddim_noise[b, j]``.
        refill_noise (Tensor[B, P, 4]): slot j >= num_kept[b] becomes ``refill_noise[b, j]``.
        alpha: alphas_cumprod[t], in (0, 1).
        alpha_next: alphas_cumprod[t_next], in [alpha, 1] (the last step, t_next < 0, is the caller's).
        eta: DDIM eta (1 = the published sampler).
        scale: signal scale of the diffusion space (2 in the published config).
        renewal_threshold: a box is kept when its max sigmoid class score is above this.
        renewal: False keeps every box (num_kept = P).

    Every tensor must be on one device.

    Returns:
        next_img (Tensor[B, P, 4] float64): next step's boxes in diffusion space, per image the kept
            boxes first in their original order, then the refilled slots.
        next_boxes (Tensor[B, P, 4], pred_boxes' dtype): ``next_img`` clamped to [-scale, scale] and
            mapped to xyxy absolute pixels, the boxes of the next head call.
        num_kept (Tensor[B] int64): number of kept boxes per image.
        Not differentiable (inference only); deterministic.

    Raises:
        ValueError: a shape, dtype, device or schedule value is invalid.
    """
    _check(img, pred_boxes, pred_logits, image_whwh, ddim_noise, refill_noise, alpha, alpha_next, eta, scale)
    kwargs = dict(
        alpha=float(alpha),
        alpha_next=float(alpha_next),
        eta=float(eta),
        scale=float(scale),
        renewal_threshold=float(renewal_threshold),
        renewal=bool(renewal),
    )
    args = (img, pred_boxes, pred_logits, image_whwh, ddim_noise, refill_noise)
    if _backend.select("ddim_renewal_step", img.device, PREFERRED) == "triton":
        return _ddim_renewal_step_triton(*args, **kwargs)
    return _ddim_renewal_step_torch(*args, **kwargs)


def _box_layout(x: torch.Tensor) -> torch.Tensor:
    """x unchanged when its last two dims are packed (strides (4, 1)), else a contiguous copy."""
    return x if x.stride(2) == 1 and x.stride(1) == 4 else x.contiguous()


@torch.library.custom_op("diffdet::ddim_renewal_step_triton", mutates_args=())
def _ddim_renewal_step_triton(
    img: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_logits: torch.Tensor,
    image_whwh: torch.Tensor,
    ddim_noise: torch.Tensor,
    refill_noise: torch.Tensor,
    *,
    alpha: float,
    alpha_next: float,
    eta: float,
    scale: float,
    renewal_threshold: float,
    renewal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton step: host float64 coefficients, threshold rounded to the logits' dtype, one launch."""
    from diffdet.kernels.ddim_renewal_step import ddim_renewal_step_fwd

    sqrt_recip, sqrt_recipm1, sigma, c = schedule_coefficients(alpha, alpha_next, eta)
    # torch compares a tensor with a Python float in the tensor's dtype; the kernel compares in fp32.
    threshold = torch.tensor(renewal_threshold, dtype=pred_logits.dtype).item()
    logits = pred_logits if pred_logits.stride(2) == 1 else pred_logits.contiguous()
    return ddim_renewal_step_fwd(
        _box_layout(img),
        _box_layout(pred_boxes),
        logits,
        image_whwh.contiguous(),
        _box_layout(ddim_noise),
        _box_layout(refill_noise),
        sqrt_recip=sqrt_recip,
        sqrt_recipm1=sqrt_recipm1,
        sqrt_alpha_next=math.sqrt(alpha_next),
        c=c,
        sigma=sigma,
        scale=scale,
        threshold=threshold,
        renewal=renewal,
    )


@_ddim_renewal_step_triton.register_fake
def _(img, pred_boxes, pred_logits, image_whwh, ddim_noise, refill_noise, **kwargs):
    """Shape-only kernel for torch.compile: next_img float64, next_boxes in pred_boxes' dtype, num_kept."""
    b, p, _ = img.shape
    return (
        img.new_empty((b, p, 4), dtype=torch.float64),
        pred_boxes.new_empty((b, p, 4)),
        img.new_empty((b,), dtype=torch.int64),
    )
