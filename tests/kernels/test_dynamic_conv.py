"""dynamic_conv: the Triton kernels held to the reference, the reference held to the published module.

Triton runs on CPU tensors under TRITON_INTERPRET=1 (see conftest.py), so shapes stay tiny; the
full-size shapes (C=256, D=64, S2=49, K up to 1000) run behind the ``gpu`` marker.
"""

import os
import sys

import pytest
import torch
from torch import nn

from diffdet.ops import dynamic_conv, dynamic_conv_reference
from diffdet.ops.dynamic_conv import _dynamic_conv_triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


class PublishedDynamicConv(nn.Module):
    """``DynamicConv`` of the published head.py, transcribed with its (49, B, C) roi layout."""

    def __init__(self, hidden_dim: int, dim_dynamic: int, pooler_resolution: int) -> None:
        super().__init__()
        self.hidden_dim, self.dim_dynamic = hidden_dim, dim_dynamic
        self.num_params = hidden_dim * dim_dynamic
        self.dynamic_layer = nn.Linear(hidden_dim, 2 * self.num_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.activation = nn.ReLU(inplace=True)
        self.out_layer = nn.Linear(hidden_dim * pooler_resolution**2, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)

    def forward(self, pro_features: torch.Tensor, roi_features: torch.Tensor) -> torch.Tensor:
        features = roi_features.permute(1, 0, 2)
        parameters = self.dynamic_layer(pro_features).permute(1, 0, 2)
        param1 = parameters[:, :, : self.num_params].view(-1, self.hidden_dim, self.dim_dynamic)
        param2 = parameters[:, :, self.num_params :].view(-1, self.dim_dynamic, self.hidden_dim)
        features = self.activation(self.norm1(torch.bmm(features, param1)))
        features = self.activation(self.norm2(torch.bmm(features, param2)))
        features = self.out_layer(features.flatten(1))
        return self.activation(self.norm3(features))

    def op_args(self, pro_features: torch.Tensor, roi_features: torch.Tensor) -> list[torch.Tensor]:
        """The arguments of ``dynamic_conv`` for the same computation."""
        return [
            roi_features.permute(1, 0, 2),
            self.dynamic_layer(pro_features)[0],
            self.norm1.weight,
            self.norm1.bias,
            self.norm2.weight,
            self.norm2.bias,
            self.out_layer.weight,
            self.out_layer.bias,
            self.norm3.weight,
            self.norm3.bias,
        ]


def make_args(k: int, s: int, c: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    """Inputs with the published initialisation scale and non-trivial LayerNorm affines, fp32 CPU."""
    torch.manual_seed(seed)
    module = PublishedDynamicConv(c, d, s)
    with torch.no_grad():
        for norm in (module.norm1, module.norm2, module.norm3):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
        return [a.detach().clone() for a in module.op_args(torch.randn(1, k, c), torch.randn(s * s, k, c))]


def max_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, in fp32 on the CPU (0 for empty tensors)."""
    diff = (got.float().cpu() - expected.float().cpu()).abs()
    return diff.max().item() if diff.numel() else 0.0


# (K, S, C, D): S is the pooled side (S2 = S*S bins). K = 1; K and C off the tile sizes; S2 = 49.
SHAPES = [(1, 7, 32, 8), (5, 7, 24, 16), (7, 3, 40, 12), (0, 7, 32, 8)]


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_published_module(seed):
    torch.manual_seed(seed)
    module = PublishedDynamicConv(32, 8, 7)
    pro, roi = torch.randn(1, 6, 32), torch.randn(49, 6, 32)
    with torch.no_grad():
        expected = module(pro, roi)
        got = dynamic_conv_reference(*module.op_args(pro, roi))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg="reference vs published DynamicConv")


def test_reference_flattens_bin_major():
    # Only bin 1, channel 2 of the LN2 output is non-zero when out_weight reads index 1*C + 2 alone.
    k, s, c, d = 2, 2, 4, 2
    args = make_args(k, s, c, d)
    out_weight = torch.zeros(c, s * s * c)
    out_weight[:, 1 * c + 2] = torch.arange(1.0, c + 1)
    args[6] = out_weight
    args[7] = torch.zeros(c)
    with torch.no_grad():
        params = args[1]
        p1, p2 = params[:, : c * d].view(k, c, d), params[:, c * d :].view(k, d, c)
        f = torch.relu(torch.nn.functional.layer_norm(args[0] @ p1, (d,), args[2], args[3]))
        f = torch.relu(torch.nn.functional.layer_norm(f @ p2, (c,), args[4], args[5]))
        h = f[:, 1, 2, None] * torch.arange(1.0, c + 1)  # [K, C]
        expected = torch.relu(torch.nn.functional.layer_norm(h, (c,), args[8], args[9]))
        torch.testing.assert_close(dynamic_conv_reference(*args), expected)


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)], ids=str
)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "K{}_S{}_C{}_D{}".format(*s))
def test_dynamic_conv_matches_reference(device, triton_backend, shape, dtype, tol):
    args = make_args(*shape)
    expected = dynamic_conv_reference(*args)  # fp32 truth
    low = [a.to(device, dtype) for a in args]
    got = dynamic_conv(*low)
    assert got.dtype == dtype and got.shape == (shape[0], shape[2])
    if dtype == torch.float32:
        torch.testing.assert_close(got.cpu(), expected, rtol=tol, atol=tol, msg="y (fp32)")
        return
    # Low precision: within tol, and at most 2x eager PyTorch's own error in that dtype (plus tol).
    eager_err = max_err(dynamic_conv_reference(*low), expected)
    err = max_err(got, expected)
    assert err <= 2 * eager_err + tol, f"y ({dtype}): error {err:.3g} vs eager {eager_err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dynamic_conv_reads_channel_major_roi(device, triton_backend, dtype):
    # The RoIAlign output [K, C, 7, 7] seen as [K, 49, C] without a copy (strides (C*49, 1, 49)).
    args = [a.to(device, dtype) for a in make_args(4, 7, 24, 8, seed=2)]
    strided = args[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert strided.stride(2) != 1
    got = dynamic_conv(strided, *args[1:])
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # same math; only the load layout differs
    torch.testing.assert_close(got, dynamic_conv(*args), rtol=tol, atol=tol, msg="y (channel-major roi)")


@pytest.mark.parametrize(("split_k", "block_m"), [(1, 16), (3, 16), (2, 32)])
def test_dynamic_conv_fwd_split_k(device, split_k, block_m):
    from diffdet.kernels.dynamic_conv import dynamic_conv_fwd

    args = [a.to(device) for a in make_args(19, 7, 32, 8, seed=3)]
    got = dynamic_conv_fwd(*args, 1e-5, split_k=split_k, block_m=block_m)
    torch.testing.assert_close(got, dynamic_conv_reference(*args), rtol=1e-4, atol=1e-4, msg="y (split-K)")


@pytest.mark.parametrize("c", [64, 320])
def test_dynamic_conv_channels_off_256(device, triton_backend, c):
    """C != 256, C = 320 padded to a 512-wide tile (every GPU config was pruned there before)."""
    args = [a.to(device) for a in make_args(3, 3, c, 8, seed=c)]
    got = dynamic_conv(*args)
    torch.testing.assert_close(got.cpu(), dynamic_conv_reference(*args).cpu(), rtol=1e-4, atol=1e-4, msg="y")


def test_shapes_beyond_the_kernels_run_the_reference(monkeypatch, triton_backend):
    """With a Hopper budget (227 KiB per block), fp32 C = 640 fits no kernel config: the op runs the
    reference instead of a launch that would raise OutOfResources; C = 64 still takes the kernels."""
    if not INTERPRET:
        pytest.skip("Triton runs CPU tensors only when interpreted")
    from diffdet.kernels import _dynamic_conv_tiles

    op_module = sys.modules["diffdet.ops.dynamic_conv"]  # diffdet.ops.dynamic_conv is also a function
    monkeypatch.setattr(_dynamic_conv_tiles, "shared_memory_budget", lambda device: 227 * 1024)
    small, large = make_args(2, 2, 64, 8), make_args(2, 2, 640, 8)
    assert op_module._triton_fits(small[0], small[2]) and not op_module._triton_fits(large[0], large[2])

    def launch_fails(*args):
        raise AssertionError("the Triton kernels ran a shape they have no tiles for")

    monkeypatch.setattr(op_module, "_dynamic_conv_triton", launch_fails)
    torch.testing.assert_close(dynamic_conv(*large), dynamic_conv_reference(*large), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dynamic_conv_gradients_match_autograd(device, triton_backend, dtype):
    args = [a.to(device, dtype) for a in make_args(3, 7, 24, 8, seed=5)]
    grad_y = torch.randn(3, 24, device=device, dtype=dtype)
    ours = [a.clone().requires_grad_() for a in args]
    ref = [a.clone().requires_grad_() for a in args]
    torch.autograd.backward(dynamic_conv(*ours), grad_y)
    torch.autograd.backward(dynamic_conv_reference(*ref), grad_y)
    names = ("roi", "params", "n1w", "n1b", "n2w", "n2b", "out_weight", "out_bias", "n3w", "n3b")
    # The backward recomputes the forward in PyTorch with the reference's ops; fp32 agrees closely,
    # bf16 differs only where a ReLU gate flips on a forward value rounded differently.
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (5e-2, 5e-2)
    for name, a, r in zip(names, ours, ref, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=rtol, atol=atol, msg=f"grad[{name}]")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_dynamic_conv_autocast_runs_in_autocast_dtype(monkeypatch, backend):
    if backend == "triton" and not INTERPRET:
        pytest.skip("Triton runs CPU tensors only when interpreted")
    monkeypatch.setenv("DIFFDET_BACKEND", backend)
    args = make_args(3, 7, 32, 8)
    mixed = [args[0], args[1].bfloat16(), *args[2:]]  # fp32 RoI features, bf16 dynamic params
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dynamic_conv(*mixed)
    assert got.dtype == torch.bfloat16
    expected = dynamic_conv_reference(*args)
    eager_err = max_err(dynamic_conv_reference(*[a.bfloat16() for a in args]), expected)
    assert max_err(got, expected) <= 2 * eager_err + 1e-2


def test_dynamic_conv_opcheck(device, triton_backend):
    args = [a.to(device).requires_grad_() for a in make_args(2, 3, 16, 8, seed=7)]
    torch.library.opcheck(_dynamic_conv_triton, (*args, 1e-5))


def test_cpu_default_is_reference(monkeypatch):
    monkeypatch.delenv("DIFFDET_BACKEND", raising=False)
    args = make_args(4, 7, 32, 8)
    torch.testing.assert_close(dynamic_conv(*args), dynamic_conv_reference(*args), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (0, torch.randn(2, 49), "roi"),
        (1, torch.randn(2, 100), "params"),
        (3, torch.randn(9), "norm1_bias"),
        (4, torch.randn(31), "norm2_weight"),
        (6, torch.randn(32, 48 * 32), "out_weight"),
        (9, torch.randn(32, dtype=torch.float64), "norm3_bias"),
        (8, torch.arange(32), "norm3_weight"),
        (7, [0.0] * 32, "out_bias"),
    ],
)
def test_dynamic_conv_rejects_bad_input(index, value, match):
    args = make_args(2, 7, 32, 8)
    args[index] = value
    with pytest.raises(ValueError, match=match):
        dynamic_conv(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("k", [100, 300, 500, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dynamic_conv_full_size_cuda(triton_backend, k, dtype):
    args = [a.cuda() for a in make_args(k, 7, 256, 64)]
    expected = dynamic_conv_reference(*args)
    low = [a.to(dtype) for a in args]
    err = max_err(dynamic_conv(*low), expected)
    eager_err = max_err(dynamic_conv_reference(*low), expected)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert err <= 2 * eager_err + tol, f"y ({dtype}, K={k}): error {err:.3g} vs eager {eager_err:.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("c", [64, 320, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dynamic_conv_channels_off_256_cuda(triton_backend, c, dtype):
    """C != 256 on the GPU, through the kernels (not the reference fallback): 320 and 512 need the
    smaller row tiles (fp32 at C = 320 overflowed shared memory before)."""
    from diffdet.ops.dynamic_conv import _triton_fits

    args = [a.cuda() for a in make_args(300, 7, c, 64, seed=c)]
    low = [a.to(dtype) for a in args]
    assert _triton_fits(low[0], low[2]), "the kernels must run this shape"
    expected = dynamic_conv_reference(*args)
    err = max_err(dynamic_conv(*low), expected)
    eager_err = max_err(dynamic_conv_reference(*low), expected)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert err <= 2 * eager_err + tol, f"y ({dtype}, C={c}): error {err:.3g} vs eager {eager_err:.3g}"
