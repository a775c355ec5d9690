"""ddim_renewal_step: the Triton kernel and the vectorised CPU path held to the literal reference, and
the reference held to the published sampler's arithmetic (dtype promotion included).

Triton runs on CPU tensors under TRITON_INTERPRET=1 (see conftest.py).
"""

import math

import pytest
import torch

from diffdet.ops import ddim_renewal_step, ddim_renewal_step_reference
from diffdet.ops.ddim_renewal_step import _ddim_renewal_step_torch


def cosine_alphas_cumprod(timesteps: int = 1000, s: float = 0.008) -> torch.Tensor:
    """The published float64 cosine schedule (REFERENCE.md §4), as test data."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    ac = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = torch.clip(1 - (ac[1:] / ac[:-1]), 0, 0.999)
    return torch.cumprod(1.0 - betas, dim=0)


ALPHAS = cosine_alphas_cumprod()
# The published time pairs of 4-step sampling that are followed by a DDIM update.
PAIRS = [(999, 749), (749, 499), (499, 249)]


def make_inputs(kept: list[int], p: int, ncls: int = 5, *, img_dtype=torch.float32, seed: int = 0):
    """[B, P, ...] inputs where image b keeps exactly kept[b] boxes, at random positions."""
    torch.manual_seed(seed)
    b = len(kept)
    whwh = torch.tensor(
        [[640.0, 480.0, 640.0, 480.0], [800.0, 608.0, 800.0, 608.0], [333.0, 500.0, 333.0, 500.0]]
    )
    whwh = whwh[torch.arange(b) % 3]
    centre = torch.rand(b, p, 2) * whwh[:, None, :2]
    size = torch.rand(b, p, 2) * 200
    pred_boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)  # some cross the border
    logits = torch.rand(b, p, ncls) * 4 - 6  # every score < 0.5
    for i, n in enumerate(kept):
        rows = torch.randperm(p)[:n]
        logits[i, rows, torch.randint(ncls, (n,))] = torch.rand(n) * 3 + 0.5  # score > 0.62
    img = (torch.randn(b, p, 4) * 1.5).to(img_dtype)  # some outside [-2, 2]: the clamp matters
    return img, pred_boxes, logits, whwh, torch.randn(b, p, 4), torch.randn(b, p, 4)


def published_step(img, pred_boxes, logits, whwh, ddim_noise, refill_noise, time, time_next):
    """The published ``model_predictions`` + ``ddim_sample`` arithmetic for batch 1, written out.

    The schedule is indexed as the published code does: [B, 1, 1] float64 buffers through extract()
    and 0-dim float64 tensors for alpha and alpha_next.
    """
    scale = 2.0
    t = torch.full((1,), time, dtype=torch.long)
    sqrt_recip = torch.sqrt(1.0 / ALPHAS)
    sqrt_recipm1 = torch.sqrt(1.0 / ALPHAS - 1)
    x_start = pred_boxes / whwh[:, None, :]
    x0, y0, x1, y1 = x_start.unbind(-1)
    x_start = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0), (y1 - y0)], dim=-1)
    x_start = (x_start * 2 - 1.0) * scale
    x_start = torch.clamp(x_start, min=-1 * scale, max=scale)
    pred_noise = (sqrt_recip.gather(-1, t).reshape(1, 1, 1) * img - x_start) / sqrt_recipm1.gather(
        -1, t
    ).reshape(1, 1, 1)
    value, _ = torch.max(torch.sigmoid(logits[0]), -1, keepdim=False)
    keep_idx = value > 0.5
    num_remain = torch.sum(keep_idx)
    pred_noise, x_start = pred_noise[:, keep_idx, :], x_start[:, keep_idx, :]
    alpha, alpha_next = ALPHAS[time], ALPHAS[time_next]
    sigma = 1.0 * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
    c = (1 - alpha_next - sigma**2).sqrt()
    noise = ddim_noise[:, : int(num_remain)]
    out = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise
    return torch.cat((out, refill_noise[:, int(num_remain) :]), dim=1), int(num_remain)


def step_kwargs(pair: tuple[int, int]) -> dict:
    return {"alpha": ALPHAS[pair[0]].item(), "alpha_next": ALPHAS[pair[1]].item()}


@pytest.mark.parametrize("img_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("pair", PAIRS, ids=str)
@pytest.mark.parametrize("kept", [0, 7, 20])
def test_reference_matches_published_arithmetic(pair, kept, img_dtype):
    inputs = make_inputs([kept], 20, img_dtype=img_dtype, seed=kept)
    expected, num_remain = published_step(*inputs, *pair)
    next_img, _, num_kept = ddim_renewal_step_reference(*inputs, **step_kwargs(pair))
    assert num_kept.tolist() == [num_remain] == [kept]
    assert next_img.dtype == expected.dtype == torch.float64
    assert torch.equal(next_img, expected), "next_img differs from the published arithmetic"


def test_reference_eta0_is_deterministic_ddim():
    # eta = 0 with img on the forward process of x0: eps is recovered exactly and the step lands on
    # sqrt(a') x0 + sqrt(1 - a') eps (DDIM Eq. 12 with sigma = 0); the boxes are that point in pixels.
    img, pred_boxes, logits, whwh, ddim_noise, refill_noise = make_inputs([6], 6, seed=3)
    a, a_next = ALPHAS[749].item(), ALPHAS[499].item()
    x0y0, x1y1 = pred_boxes[..., :2] / whwh[:, None, :2], pred_boxes[..., 2:] / whwh[:, None, :2]
    x0 = ((torch.cat([(x0y0 + x1y1) / 2, x1y1 - x0y0], -1) * 2 - 1) * 2).clamp(-2, 2).double()
    eps = torch.randn(1, 6, 4, dtype=torch.float64)
    img = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    next_img, next_boxes, num_kept = ddim_renewal_step_reference(
        img, pred_boxes, logits, whwh, ddim_noise, refill_noise, alpha=a, alpha_next=a_next, eta=0.0
    )
    assert num_kept.tolist() == [6]
    expected = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    torch.testing.assert_close(next_img, expected, rtol=1e-6, atol=1e-6, msg="next_img")
    unit = (expected.clamp(-2, 2) / 2 + 1) / 2  # normalised cxcywh
    corners = torch.cat([unit[..., :2] - unit[..., 2:] / 2, unit[..., :2] + unit[..., 2:] / 2], -1)
    torch.testing.assert_close(next_boxes, (corners * whwh[:, None, :]).float(), msg="next_boxes")


BATCHES = [[0], [1], [5], [0, 3, 5], [5, 5, 0], [2, 0, 4]]


@pytest.mark.parametrize("img_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("renewal", [True, False])
@pytest.mark.parametrize("kept", BATCHES, ids=str)
def test_vectorised_path_is_bit_identical(kept, renewal, img_dtype):
    inputs = make_inputs(kept, 5, img_dtype=img_dtype, seed=len(kept))
    kwargs = dict(step_kwargs(PAIRS[1]), eta=1.0, scale=2.0, renewal_threshold=0.5, renewal=renewal)
    expected = ddim_renewal_step_reference(*inputs, **kwargs)
    got = _ddim_renewal_step_torch(*inputs, **kwargs)
    for name, g, e in zip(("next_img", "next_boxes", "num_kept"), got, expected, strict=True):
        assert g.dtype == e.dtype and torch.equal(g, e), name


@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("kept", "p"), [([1], 1), ([0, 9, 37], 37), ([130, 0], 130), ([3, 130, 64], 130)], ids=str
)
def test_ddim_renewal_step_matches_reference(device, triton_backend, kept, p, logits_dtype):
    img, pred_boxes, logits, whwh, ddim_noise, refill_noise = make_inputs(
        kept, p, img_dtype=torch.float64, seed=p
    )
    inputs = (img, pred_boxes, logits.to(logits_dtype), whwh, ddim_noise, refill_noise)
    inputs = tuple(x.to(device) for x in inputs)
    for pair in PAIRS:
        expected = ddim_renewal_step_reference(*inputs, **step_kwargs(pair))
        next_img, next_boxes, num_kept = ddim_renewal_step(*inputs, **step_kwargs(pair))
        assert next_img.dtype == torch.float64 and next_boxes.dtype == torch.float32
        torch.testing.assert_close(num_kept, expected[2], rtol=0, atol=0, msg="num_kept")
        # fp32 kernel arithmetic vs the float64 reference: values are O(1) in diffusion space and
        # O(1000) pixels as boxes.
        torch.testing.assert_close(next_img, expected[0], rtol=1e-4, atol=1e-5, msg="next_img")
        torch.testing.assert_close(next_boxes, expected[1], rtol=1e-4, atol=1e-3, msg="next_boxes")
    assert num_kept.tolist() == kept


@pytest.mark.parametrize("where", ["boxes", "img", "logits", "refill"])
@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ddim_renewal_step_propagates_nan_as_the_reference(device, triton_backend, where, logits_dtype):
    """NaN in one input: torch.clamp and amax propagate it, so the kernel's clamps and max must too
    (a NaN logit makes the score NaN: the proposal is not kept)."""
    img, pred_boxes, logits, whwh, ddim_noise, refill_noise = make_inputs([6, 9], 20, seed=5)
    nan = float("nan")
    kept_rows = [(logits[b].amax(-1) > 0).nonzero()[:, 0].tolist() for b in range(2)]
    dropped = next(r for r in range(20) if r not in kept_rows[1])
    if where == "boxes":  # kept boxes: x0 of the slots they land in is NaN
        pred_boxes[0, kept_rows[0][0], 1] = nan
        pred_boxes[1, kept_rows[1][3], 2] = nan
        pred_boxes[1, dropped, 0] = nan  # never read
    elif where == "img":  # a kept box's eps
        img[0, kept_rows[0][2], 3] = nan
    elif where == "logits":
        logits[1, kept_rows[1][1], 0] = nan  # a kept row: dropped, as the reference's NaN score is
        logits[1, dropped, 2] = nan  # a dropped row stays dropped
    else:  # a refill slot: next_img copies the NaN, next_boxes clamps it
        refill_noise[:, 17, 0] = nan
    inputs = (img, pred_boxes, logits.to(logits_dtype), whwh, ddim_noise, refill_noise)
    inputs = tuple(x.to(device) for x in inputs)
    for pair in PAIRS:
        expected = ddim_renewal_step_reference(*inputs, **step_kwargs(pair))
        got = ddim_renewal_step(*inputs, **step_kwargs(pair))
        assert got[2].tolist() == expected[2].tolist() == [6, 8 if where == "logits" else 9], "num_kept"
        for name, g, e in zip(("next_img", "next_boxes"), got[:2], expected[:2], strict=True):
            assert torch.equal(g.isnan(), e.isnan()), f"{name}: NaN exactly where the reference has it"
        assert where == "logits" or expected[1].isnan().any()
        torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-5, equal_nan=True, msg="next_img")
        torch.testing.assert_close(
            got[1], expected[1], rtol=1e-4, atol=1e-3, equal_nan=True, msg="next_boxes"
        )


@pytest.mark.parametrize("block_p", [16, 32])
def test_ddim_renewal_step_fwd_carries_count_across_tiles(device, block_p):
    from diffdet.kernels.ddim_renewal_step import ddim_renewal_step_fwd
    from diffdet.ops.ddim_renewal_step import schedule_coefficients

    kept = [0, 21, 37, 16]
    inputs = tuple(x.to(device) for x in make_inputs(kept, 37, seed=11))
    kwargs = step_kwargs(PAIRS[2])
    sqrt_recip, sqrt_recipm1, sigma, c = schedule_coefficients(kwargs["alpha"], kwargs["alpha_next"], 1.0)
    got = ddim_renewal_step_fwd(
        *inputs,
        sqrt_recip=sqrt_recip,
        sqrt_recipm1=sqrt_recipm1,
        sqrt_alpha_next=math.sqrt(kwargs["alpha_next"]),
        c=c,
        sigma=sigma,
        scale=2.0,
        threshold=0.5,
        renewal=True,
        block_p=block_p,
    )
    expected = ddim_renewal_step_reference(*inputs, **kwargs)
    assert got[2].tolist() == kept
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-5, msg="next_img")
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-3, msg="next_boxes")


def test_ddim_renewal_step_without_renewal_keeps_all(device, triton_backend):
    inputs = tuple(x.to(device) for x in make_inputs([0, 4], 9))
    expected = ddim_renewal_step_reference(*inputs, **step_kwargs(PAIRS[0]), renewal=False)
    got = ddim_renewal_step(*inputs, **step_kwargs(PAIRS[0]), renewal=False)
    assert got[2].tolist() == [9, 9]
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-5, msg="next_img")


def test_ddim_renewal_step_empty(device, triton_backend):
    inputs = tuple(x.to(device) for x in make_inputs([0, 0], 0))
    next_img, next_boxes, num_kept = ddim_renewal_step(*inputs, **step_kwargs(PAIRS[0]))
    assert next_img.shape == next_boxes.shape == (2, 0, 4) and num_kept.tolist() == [0, 0]


def test_ddim_renewal_step_opcheck(device, triton_backend):
    from diffdet.ops.ddim_renewal_step import _ddim_renewal_step_triton

    inputs = tuple(x.to(device) for x in make_inputs([2, 0], 6))
    kwargs = dict(step_kwargs(PAIRS[0]), eta=1.0, scale=2.0, renewal_threshold=0.5, renewal=True)
    torch.library.opcheck(_ddim_renewal_step_triton, inputs, kwargs)


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (0, torch.randn(2, 4, 3), "img"),
        (0, torch.randn(2, 4, 4).half(), "img"),
        (1, torch.randn(2, 5, 4), "pred_boxes"),
        (2, torch.randn(2, 4, 0), "pred_logits"),
        (3, torch.randn(4), "image_whwh"),
        (4, torch.randn(1, 4, 4), "ddim_noise"),
        (5, torch.arange(32).view(2, 4, 4), "refill_noise"),
    ],
)
def test_ddim_renewal_step_rejects_bad_input(index, value, match):
    inputs = list(make_inputs([1, 2], 4))
    inputs[index] = value
    with pytest.raises(ValueError, match=match):
        ddim_renewal_step(*inputs, **step_kwargs(PAIRS[0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0, "alpha_next": 0.5}, "alpha"),
        ({"alpha": 0.5, "alpha_next": 0.4}, "alpha_next"),
        ({"alpha": 0.1, "alpha_next": 0.5, "eta": -1.0}, "eta"),
        ({"alpha": 0.1, "alpha_next": 0.5, "eta": 3.0}, "eta"),
        ({"alpha": 0.1, "alpha_next": 0.5, "scale": 0.0}, "scale"),
    ],
)
def test_ddim_renewal_step_rejects_bad_schedule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim_renewal_step(*make_inputs([1], 4), **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_ddim_renewal_step_cuda_graph(triton_backend):
    inputs = tuple(x.cuda() for x in make_inputs([3, 0, 500], 500, ncls=80))
    kwargs = step_kwargs(PAIRS[1])
    eager = ddim_renewal_step(*inputs, **kwargs)  # also compiles the kernel before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ddim_renewal_step(*inputs, **kwargs)
    graph.replay()
    torch.cuda.synchronize()
    for name, g, e in zip(("next_img", "next_boxes", "num_kept"), captured, eager, strict=True):
        assert torch.equal(g, e), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_ddim_renewal_step_is_one_launch(triton_backend):
    from torch.profiler import ProfilerActivity, profile

    inputs = tuple(x.cuda() for x in make_inputs([3, 0, 500], 500, ncls=80))
    ddim_renewal_step(*inputs, **step_kwargs(PAIRS[1]))  # compile outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        ddim_renewal_step(*inputs, **step_kwargs(PAIRS[1]))
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1 and "ddim_renewal_step" in kernels[0], kernels


_PTX_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from diffdet.kernels import ddim_renewal_step as m

fn = m._ddim_renewal_step_kernel
floats = {"sqrt_recip", "sqrt_recipm1", "sqrt_alpha_next", "c", "sigma", "scale", "threshold"}
ptrs = {"img_ptr": "*fp64", "next_img_ptr": "*fp64", "num_kept_ptr": "*i64"}
consts = dict(BLOCK_P=64, BLOCK_K=16, RENEWAL=True)
sig = {n: "constexpr" if n in consts else ptrs.get(n, "*fp32") if n.endswith("_ptr") else
       "fp32" if n in floats else "i32" for n in fn.arg_names}
src = ASTSource(fn=fn, signature=sig, constexprs=consts)
print(triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["ptx"])
"""


def test_compiled_step_uses_only_nan_propagating_min_max():
    """The GPU code itself (compiled for sm_90 ahead of time, no GPU needed): every f32 min/max is the
    NaN-propagating PTX form, where the default tl.minimum/maximum/max compile to min.f32/max.f32,
    which drop NaN (the interpreter of Triton <= 3.6 propagates NaN either way, so it cannot tell)."""
    import os
    import re
    import subprocess
    import sys

    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend to compile for sm_90")
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", _PTX_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"\b(?:max|min)\.NaN\.f32", run.stdout)
    assert not re.search(r"\b(?:max|min)(?:\.ftz)?\.f32", run.stdout), "a min/max that drops NaN"
