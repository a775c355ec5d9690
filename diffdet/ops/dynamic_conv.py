"""``dynamic_conv``: DiffusionDet's instance interaction (DynamicConv), one op.

For every proposal k (REFERENCE.md §2, ``DynamicConv`` in the published ``head.py``)::

    param1 = params[k, :C*D].view(C, D)          param2 = params[k, C*D:].view(D, C)
    f1 = ReLU(LN_D(roi[k] @ param1))              # [S2, D]
    f2 = ReLU(LN_C(f1 @ param2))                  # [S2, C]
    y[k] = ReLU(LN_C(out_weight @ flatten(f2) + out_bias))   # flatten index = bin * C + channel

Backends: CUDA tensors run the Triton kernels of :mod:`diffdet.kernels.dynamic_conv` (the two small
GEMMs fused per proposal, the 12544->256 Linear with LayerNorm and ReLU in its epilogue); CPU tensors run
:func:`dynamic_conv_reference` (eager PyTorch, three batched matmuls). ``DIFFDET_BACKEND=triton`` runs
the Triton kernels on CPU tensors too when ``TRITON_INTERPRET=1`` (that is how CI tests them).
Shapes whose tiles fit no kernel config on the device (:func:`_triton_fits`; with D = 64 and 49 bins
on an H100/H200: C > 512 in fp32, C > 1024 in bf16/fp16) run the reference, so every C works.

Autograd: the Triton path is the custom op ``diffdet::dynamic_conv_triton``. It saves only its inputs;
the backward recomputes the intermediates with the reference's PyTorch ops and applies the chain rule
by hand (:func:`_dynamic_conv_backward`), so its gradients are autograd's through the reference. That
is activation checkpointing: none of the [K, 49, C] intermediates stay alive between forward and
backward, at the price of one eager forward inside the backward. The reference path is differentiated
by autograd directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffdet.ops import _backend
from diffdet.ops._checks import check_floating, check_same_device, check_same_dtype, check_shape, check_tensor

PREFERRED = {"cuda": "triton"}

_NAMES = (
    "roi",
    "params",
    "norm1_weight",
    "norm1_bias",
    "norm2_weight",
    "norm2_bias",
    "out_weight",
    "out_bias",
    "norm3_weight",
    "norm3_bias",
)


def _check(args: tuple[torch.Tensor, ...]) -> None:
    """Validate the ten tensor arguments, in signature order (metadata only)."""
    tensors = dict(zip(_NAMES, args, strict=True))
    for name, x in tensors.items():
        check_tensor(name, x)
    roi, norm1_weight = tensors["roi"], tensors["norm1_weight"]
    check_shape("roi", roi, (None, None, None))
    check_shape("norm1_weight", norm1_weight, (None,))
    k, s2, c = roi.shape
    d = norm1_weight.shape[0]
    if min(s2, c, d) < 1:
        raise ValueError(f"roi [K, S2, C] and norm1_weight [D] need S2, C, D >= 1, got {(s2, c, d)}")
    check_shape("params", tensors["params"], (k, 2 * c * d))
    check_shape("norm1_bias", tensors["norm1_bias"], (d,))
    for name in ("norm2_weight", "norm2_bias", "out_bias", "norm3_weight", "norm3_bias"):
        check_shape(name, tensors[name], (c,))
    check_shape("out_weight", tensors["out_weight"], (c, s2 * c))
    for name, x in tensors.items():
        check_floating(name, x)
    check_same_dtype(tensors)
    check_same_device(tensors)


def dynamic_conv_reference(
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
    *,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Plain-PyTorch DynamicConv, op for op as the published ``DynamicConv.forward``.

    Same arguments and result as :func:`dynamic_conv`; no input checks. Runs in the inputs' dtype
    (``F.layer_norm`` keeps fp32 statistics for bf16/fp16, as in the published code under autocast).
    """
    k, _, c = roi.shape
    d = norm1_weight.shape[0]
    param1 = params[:, : c * d].view(k, c, d)  # [K, C, D]
    param2 = params[:, c * d :].view(k, d, c)  # [K, D, C]
    f = torch.bmm(roi, param1)  # [K, S2, D]
    f = F.relu(F.layer_norm(f, (d,), norm1_weight, norm1_bias, eps), inplace=True)
    f = torch.bmm(f, param2)  # [K, S2, C]
    f = F.relu(F.layer_norm(f, (c,), norm2_weight, norm2_bias, eps), inplace=True)
    f = F.linear(f.flatten(1), out_weight, out_bias)  # [K, C], flatten index bin * C + channel
    return F.relu(F.layer_norm(f, (c,), norm3_weight, norm3_bias, eps), inplace=True)


def dynamic_conv(
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
    *,
    eps: float = 1e-5,
) -> torch.Tensor:
    """DiffusionDet's instance interaction for K proposals (REFERENCE.md §2, DynamicConv).

    ``y = ReLU(LN3(out_layer(flatten(ReLU(LN2(ReLU(LN1(roi @ param1)) @ param2))))))``.

    Args:
        roi (Tensor[K, S2, C]): pooled RoI features per proposal, bin-major (S2 = 49 bins of the 7x7
            grid, row-major), C channels. fp32, bf16 or fp16 (fp64 runs the reference).
        params (Tensor[K, 2*C*D]): output of the ``dynamic_layer`` Linear; the first C*D values of a
            row are param1 viewed as [C, D], the rest param2 viewed as [D, C].
        norm1_weight (Tensor[D]), norm1_bias (Tensor[D]): LayerNorm over the D dynamic channels.
        norm2_weight (Tensor[C]), norm2_bias (Tensor[C]): LayerNorm over the C channels of each bin.
        out_weight (Tensor[C, S2*C]): ``out_layer`` Linear weight; input index = bin * C + channel.
        out_bias (Tensor[C]): ``out_layer`` bias.
        norm3_weight (Tensor[C]), norm3_bias (Tensor[C]): LayerNorm after ``out_layer``.
        eps: LayerNorm epsilon of all three norms.

    Every tensor must share one dtype and one device. Under ``torch.autocast`` for their device, all
    of them are cast to the autocast dtype first (the op is one low-precision unit, as the published
    code's bmm/linear are) and the result has that dtype.

    Returns:
        Tensor[K, C] in the inputs' (or autocast) dtype, >= 0. Differentiable w.r.t. every tensor
        argument. Deterministic (no atomics in forward or backward). The Triton path accumulates in fp32
        and keeps fp32 LayerNorm statistics; like eager PyTorch it rounds the GEMM operands (F1 and the
        flattened features) to the input dtype, but it feeds the GEMM outputs to the LayerNorms in fp32
        where eager rounds them first.

    Raises:
        ValueError: a shape, dtype or device does not match the layout above.
    """
    args = (roi, params, norm1_weight, norm1_bias, norm2_weight, norm2_bias, out_weight, out_bias)
    args += (norm3_weight, norm3_bias)
    device_type = roi.device.type if isinstance(roi, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        args = tuple(
            a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        )
    _check(args)
    backend = _backend.select("dynamic_conv", roi.device, PREFERRED)
    with torch.autocast(device_type, enabled=False):
        if backend != "triton" or args[0].dtype == torch.float64 or not _triton_fits(args[0], args[2]):
            return dynamic_conv_reference(*args, eps=eps)
        return _dynamic_conv_triton(*args, float(eps))


def _triton_fits(roi: torch.Tensor, norm1_weight: torch.Tensor) -> bool:
    """Whether the Triton kernels have tiles for roi [K, S2, C] and D on roi's device (shared memory
    and registers, ``diffdet.kernels._dynamic_conv_tiles``); always True in the interpreter."""
    from diffdet.kernels._dynamic_conv_tiles import kernels_fit, shared_memory_budget

    _, s2, c = roi.shape
    budget = shared_memory_budget(roi.device)
    return kernels_fit(s2, c, norm1_weight.shape[0], roi.element_size(), budget)


@torch.library.custom_op("diffdet::dynamic_conv_triton", mutates_args=())
def _dynamic_conv_triton(
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
) -> torch.Tensor:
    """The Triton forward on inputs made unit-stride where the kernels need it (roi may be strided)."""
    from diffdet.kernels.dynamic_conv import dynamic_conv_fwd

    params = params if params.stride(1) == 1 else params.contiguous()
    out_weight = out_weight if out_weight.stride(1) == 1 else out_weight.contiguous()
    vectors = [
        v.contiguous() for v in (norm1_weight, norm1_bias, norm2_weight, norm2_bias, out_bias, norm3_weight)
    ]
    n1w, n1b, n2w, n2b, ob, n3w = vectors
    return dynamic_conv_fwd(
        roi, params, n1w, n1b, n2w, n2b, out_weight, ob, n3w, norm3_bias.contiguous(), eps
    )


@_dynamic_conv_triton.register_fake
def _(*args: torch.Tensor | float) -> torch.Tensor:
    """Shape-only kernel for torch.compile: the same checks, an empty [K, C]."""
    _check(args[:10])
    roi = args[0]
    return roi.new_empty((roi.shape[0], roi.shape[2]))


def _ln_backward(grad, x, n, mean, rstd, weight, bias):
    """Gradients of ReLU(LayerNorm(x)) over the last dim, given LN's output n and saved statistics."""
    grad = torch.where(n > 0, grad, torch.zeros_like(grad))  # ReLU
    shape = [x.shape[-1]]
    return torch.ops.aten.native_layer_norm_backward(grad, x, shape, mean, rstd, weight, bias, [True] * 3)


def _dynamic_conv_backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Backward of the Triton forward: recompute the intermediates in PyTorch, chain rule by hand.

    The ops are the ones autograd records for :func:`dynamic_conv_reference` (bmm, native_layer_norm,
    relu, linear) in the same dtype, so the gradients match autograd through the reference.
    """
    roi, params, n1w, n1b, n2w, n2b, out_weight, out_bias, n3w, n3b = ctx.saved_tensors
    eps = ctx.eps
    k, s2, c = roi.shape
    d = n1w.shape[0]
    p1 = params[:, : c * d].reshape(k, c, d)
    p2 = params[:, c * d :].reshape(k, d, c)
    h1 = torch.bmm(roi, p1)  # [K, S2, D]
    n1, m1, r1 = torch.ops.aten.native_layer_norm(h1, [d], n1w, n1b, eps)
    a1 = torch.relu(n1)
    h2 = torch.bmm(a1, p2)  # [K, S2, C]
    n2, m2, r2 = torch.ops.aten.native_layer_norm(h2, [c], n2w, n2b, eps)
    flat = torch.relu(n2).reshape(k, s2 * c)
    h3 = torch.addmm(out_bias, flat, out_weight.t())  # [K, C]
    n3, m3, r3 = torch.ops.aten.native_layer_norm(h3, [c], n3w, n3b, eps)

    g_h3, g_n3w, g_n3b = _ln_backward(grad_y, h3, n3, m3, r3, n3w, n3b)
    g_flat = g_h3 @ out_weight  # [K, S2*C]
    g_out_weight = g_h3.t() @ flat  # [C, S2*C]
    g_out_bias = g_h3.sum(0)
    g_h2, g_n2w, g_n2b = _ln_backward(g_flat.reshape(k, s2, c), h2, n2, m2, r2, n2w, n2b)
    g_a1 = torch.bmm(g_h2, p2.transpose(1, 2))  # [K, S2, D]
    g_p2 = torch.bmm(a1.transpose(1, 2), g_h2)  # [K, D, C]
    g_h1, g_n1w, g_n1b = _ln_backward(g_a1, h1, n1, m1, r1, n1w, n1b)
    g_roi = torch.bmm(g_h1, p1.transpose(1, 2))  # [K, S2, C]
    g_p1 = torch.bmm(roi.transpose(1, 2), g_h1)  # [K, C, D]
    g_params = torch.cat([g_p1.reshape(k, c * d), g_p2.reshape(k, d * c)], dim=1)
    return (g_roi, g_params, g_n1w, g_n1b, g_n2w, g_n2b, g_out_weight, g_out_bias, g_n3w, g_n3b, None)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:10])
    ctx.eps = inputs[10]


_dynamic_conv_triton.register_autograd(_dynamic_conv_backward, setup_context=_setup_context)
