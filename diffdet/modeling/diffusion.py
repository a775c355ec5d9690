"""The diffusion process over boxes (REFERENCE.md §4): schedule, q_sample, DDIM times, training inputs.

Box frames: GT boxes enter as normalised cxcywh in [0, 1]; the diffusion space is
``x = (box * 2 - 1) * scale`` with ``scale`` = 2 (SNR_SCALE), so a box lives in [-scale, scale]; the head
takes xyxy boxes in input-image pixels. All schedule tensors are float64, as in the reference.
"""

from __future__ import annotations

import functools
import itertools
import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor

from diffdet.modeling.box_ops import box_cxcywh_to_xyxy

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
"""Names of the reference's 12 float64 diffusion buffers, in its registration order."""


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> Tensor:
    """Cosine noise schedule (Nichol & Dhariwal 2021, Eq. 17), as the reference computes it.

    ``ᾱ(x) = cos(((x / T + s) / (1 + s)) · π/2)²`` normalised by ᾱ(0) on x = 0..T;
    ``β_t = 1 - ᾱ_{t+1} / ᾱ_t`` clipped to [0, 0.999].

    Args:
        timesteps: T (1000 in the reference), >= 1.
        s: offset that keeps β small near t = 0.

    Returns:
        Tensor[T]: float64 betas on the CPU.

    Raises:
        ValueError: ``timesteps`` < 1.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.999)


def schedule_buffers(timesteps: int) -> dict[str, Tensor]:
    """The 12 float64 buffers the reference registers on its detector, by name.

    Args:
        timesteps: T of the cosine schedule.

    Returns:
        dict name -> Tensor[T] float64 on the CPU, in the order of :data:`SCHEDULE_BUFFERS`.
    """
    betas = cosine_beta_schedule(timesteps)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": torch.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": torch.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
        "posterior_mean_coef1": betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
    }


def extract(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """Gather ``values[t]`` per batch element and shape it to broadcast over an ``ndim``-dim tensor.

    Args:
        values (Tensor[T]): a schedule buffer.
        t (Tensor[B]): int64 timesteps.
        ndim: rank of the tensor the result multiplies.

    Returns:
        Tensor[B, 1, ..., 1] with ``ndim`` dims, ``values``' dtype.
    """
    return values.gather(-1, t).reshape(t.shape[0], *((1,) * (ndim - 1)))


def q_sample(
    x_start: Tensor, t: Tensor, noise: Tensor, sqrt_alphas_cumprod: Tensor, sqrt_one_minus: Tensor
) -> Tensor:
    """Forward diffusion ``x_t = √ᾱ_t · x_0 + √(1 - ᾱ_t) · ε`` (DDPM Eq. 4).

    Args:
        x_start (Tensor[B, ...]): x_0 in diffusion space.
        t (Tensor[B]): int64 timesteps.
        noise (Tensor[B, ...]): ε, same shape as ``x_start``.
        sqrt_alphas_cumprod (Tensor[T]): √ᾱ (float64 buffer).
        sqrt_one_minus (Tensor[T]): √(1 - ᾱ) (float64 buffer).

    Returns:
        Tensor[B, ...]: x_t, promoted to float64 by the buffers (as in the reference).
    """
    a = extract(sqrt_alphas_cumprod, t, x_start.dim())
    b = extract(sqrt_one_minus, t, x_start.dim())
    return a * x_start + b * noise


def ddim_time_pairs(timesteps: int, steps: int) -> list[tuple[int, int]]:
    """The reference's DDIM (time, time_next) pairs: ``reversed(int(linspace(-1, T - 1, steps + 1)))``.

    Args:
        timesteps: T (1000).
        steps: sampling steps S, 1 <= S <= T.

    Returns:
        S pairs from (T - 1, ·) down to (·, -1); e.g. S = 2 gives [(999, 499), (499, -1)].

    Raises:
        ValueError: ``steps`` is not in [1, timesteps].
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    return list(_ddim_time_pairs(timesteps, steps))


@functools.cache
def _ddim_time_pairs(timesteps: int, steps: int) -> tuple[tuple[int, int], ...]:
    """:func:`ddim_time_pairs`, cached: a call while tracing (``torch.export`` makes every tensor
    symbolic, so ``tolist`` would give unknown ints) reads the result of an earlier eager call."""
    # float32 linspace truncated toward zero, exactly as the reference (CPU, default dtype float32).
    times = torch.linspace(-1, timesteps - 1, steps=steps + 1, dtype=torch.float32).int().tolist()
    times = times[::-1]
    return tuple(itertools.pairwise(times))


def prepare_diffusion_concat(
    gt_boxes: Tensor,
    *,
    num_proposals: int,
    scale: float,
    timesteps: int,
    sqrt_alphas_cumprod: Tensor,
    sqrt_one_minus: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy training boxes for one image (REFERENCE.md §4, ``prepare_diffusion_concat``).

    Random draws, in the reference's order and shapes: t ~ randint[0, T) of shape (1,), ε ~ randn(P, 4),
    then (only when 0 < n < P or n = 0) the placeholder boxes randn(P - n, 4) / 6 + 0.5 with w, h
    clipped to >= 1e-4. With no GT, a fake GT [0.5, 0.5, 1, 1] stands in. With n > P a random subset
    of P GT boxes is kept in their original order, chosen by Python's ``random.shuffle`` of a mask as
    the reference does (so the torch stream is not consumed there).

    Args:
        gt_boxes (Tensor[n, 4]): GT boxes, normalised cxcywh in [0, 1], float32.
        num_proposals: P.
        scale: signal scale (2.0).
        timesteps: T.
        sqrt_alphas_cumprod (Tensor[T]): float64 buffer on ``gt_boxes``' device.
        sqrt_one_minus (Tensor[T]): float64 buffer on ``gt_boxes``' device.
        generator: torch generator for the draws (the global one when None).

    Returns:
        (boxes, noise, t): boxes Tensor[P, 4] normalised xyxy in [0, 1] (float64, from the float64
        schedule), noise Tensor[P, 4] float32, t Tensor[1] int64.
    """
    device = gt_boxes.device
    t = torch.randint(0, timesteps, (1,), device=device, generator=generator)
    noise = torch.randn(num_proposals, 4, device=device, generator=generator)
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        gt_boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0]], dtype=torch.float32, device=device)
        num_gt = 1
    if num_gt < num_proposals:
        placeholder = torch.randn(num_proposals - num_gt, 4, device=device, generator=generator) / 6.0 + 0.5
        placeholder[:, 2:] = torch.clip(placeholder[:, 2:], min=1e-4)
        x_start = torch.cat((gt_boxes, placeholder), dim=0)
    elif num_gt > num_proposals:
        mask = [True] * num_proposals + [False] * (num_gt - num_proposals)
        random.shuffle(mask)
        x_start = gt_boxes[torch.tensor(mask, device=device)]
    else:
        x_start = gt_boxes
    x_start = (x_start * 2.0 - 1.0) * scale
    x = q_sample(x_start[None], t, noise[None], sqrt_alphas_cumprod, sqrt_one_minus)[0]
    x = torch.clamp(x, min=-scale, max=scale)
    x = ((x / scale) + 1) / 2.0
    return box_cxcywh_to_xyxy(x), noise, t
