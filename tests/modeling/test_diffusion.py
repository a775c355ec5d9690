"""Diffusion schedule, q_sample, DDIM time pairs and training inputs against REFERENCE.md §4."""

from __future__ import annotations

import math
import random

import pytest
import torch

from diffdet.modeling.box_ops import box_cxcywh_to_xyxy
from diffdet.modeling.diffusion import (
    SCHEDULE_BUFFERS,
    cosine_beta_schedule,
    ddim_time_pairs,
    prepare_diffusion_concat,
    q_sample,
    schedule_buffers,
)


def test_alphas_cumprod_checked_values():
    ac = schedule_buffers(1000)["alphas_cumprod"]
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    expect = {
        0: (0.99996, 1e-5),
        249: (0.8470, 1e-4),
        499: (0.4938, 1e-4),
        749: (0.1443, 1e-4),
        999: (2.4e-9, 1e-10),
    }
    for t, (value, tol) in expect.items():
        assert abs(float(ac[t]) - value) < tol, t


def test_betas_are_clipped_only_at_the_end():
    betas = cosine_beta_schedule(1000)
    assert float(betas[-1]) == 0.999
    assert float(betas[:-1].max()) < 0.999 and float(betas.min()) > 0


def test_schedule_buffers_relations():
    buffers = schedule_buffers(1000)
    assert tuple(buffers) == SCHEDULE_BUFFERS
    assert all(b.dtype == torch.float64 and b.shape == (1000,) for b in buffers.values())
    ac = buffers["alphas_cumprod"]
    torch.testing.assert_close(
        buffers["sqrt_recip_alphas_cumprod"] * buffers["sqrt_alphas_cumprod"], torch.ones_like(ac)
    )
    assert float(buffers["alphas_cumprod_prev"][0]) == 1.0
    torch.testing.assert_close(buffers["alphas_cumprod_prev"][1:], ac[:-1])
    assert float(buffers["posterior_variance"][0]) == 0.0
    assert float(buffers["posterior_log_variance_clipped"][0]) == pytest.approx(math.log(1e-20))


@pytest.mark.parametrize(
    ("steps", "pairs"),
    [
        (1, [(999, -1)]),
        (2, [(999, 499), (499, -1)]),
        (4, [(999, 749), (749, 499), (499, 249), (249, -1)]),
    ],
)
def test_ddim_time_pairs(steps, pairs):
    assert ddim_time_pairs(1000, steps) == pairs


def test_ddim_time_pairs_truncate_like_the_reference():
    # linspace(-1, 999, 4) = -1, 332.33, 665.67, 999 -> int() truncates.
    assert ddim_time_pairs(1000, 3) == [(999, 665), (665, 332), (332, -1)]
    with pytest.raises(ValueError, match="steps"):
        ddim_time_pairs(1000, 0)


def test_q_sample_hand_value():
    b = schedule_buffers(1000)
    x0 = torch.tensor([[[1.0, -1.0]]])
    noise = torch.tensor([[[0.5, 2.0]]])
    out = q_sample(
        x0, torch.tensor([499]), noise, b["sqrt_alphas_cumprod"], b["sqrt_one_minus_alphas_cumprod"]
    )
    a = float(b["alphas_cumprod"][499])
    expect = torch.tensor([[[math.sqrt(a) + math.sqrt(1 - a) * 0.5, -math.sqrt(a) + math.sqrt(1 - a) * 2.0]]])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expect.double())


def _published_prepare_diffusion_concat(gt_boxes, num_proposals, scale, sqrt_ac, sqrt_1m):
    """The published ``prepare_diffusion_concat``, transcribed statement by statement (CPU)."""
    t = torch.randint(0, 1000, (1,)).long()
    noise = torch.randn(num_proposals, 4)
    num_gt = gt_boxes.shape[0]
    if not num_gt:
        gt_boxes = torch.as_tensor([[0.5, 0.5, 1.0, 1.0]], dtype=torch.float)
        num_gt = 1
    if num_gt < num_proposals:
        box_placeholder = torch.randn(num_proposals - num_gt, 4) / 6.0 + 0.5
        box_placeholder[:, 2:] = torch.clip(box_placeholder[:, 2:], min=1e-4)
        x_start = torch.cat((gt_boxes, box_placeholder), dim=0)
    elif num_gt > num_proposals:
        select_mask = [True] * num_proposals + [False] * (num_gt - num_proposals)
        random.shuffle(select_mask)
        x_start = gt_boxes[select_mask]
    else:
        x_start = gt_boxes
    x_start = (x_start * 2.0 - 1.0) * scale
    a = sqrt_ac.gather(-1, t).reshape(1, 1)
    b = sqrt_1m.gather(-1, t).reshape(1, 1)
    x = a * x_start + b * noise
    x = torch.clamp(x, min=-1 * scale, max=scale)
    x = ((x / scale) + 1) / 2.0
    return box_cxcywh_to_xyxy(x), noise, t


@pytest.mark.parametrize("num_gt", [0, 3, 8, 13])
def test_prepare_diffusion_concat_matches_published(num_gt):
    buffers = schedule_buffers(1000)
    sqrt_ac, sqrt_1m = buffers["sqrt_alphas_cumprod"], buffers["sqrt_one_minus_alphas_cumprod"]
    gt = torch.rand(num_gt, 4) * 0.5 + 0.25
    torch.manual_seed(7)
    random.seed(7)
    expect = _published_prepare_diffusion_concat(gt, 8, 2.0, sqrt_ac, sqrt_1m)
    torch.manual_seed(7)
    random.seed(7)
    got = prepare_diffusion_concat(
        gt, num_proposals=8, scale=2.0, timesteps=1000, sqrt_alphas_cumprod=sqrt_ac, sqrt_one_minus=sqrt_1m
    )
    for name, a, b in zip(("boxes", "noise", "t"), got, expect, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert got[0].shape == (8, 4) and got[0].dtype == torch.float64
