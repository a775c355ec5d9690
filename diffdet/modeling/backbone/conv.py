"""Conv2d with an attached norm (detectron2's layout), the norm factory and detectron2's weight fills.

The reference's state_dict names each trunk norm ``<conv>.norm.*`` because detectron2's ``Conv2d``
owns the norm that follows it; this module keeps that layout so reference checkpoints load by name.
"""

from __future__ import annotations

import torch
from torch import nn

from diffdet.modeling.backbone.frozen_bn import FrozenBatchNorm2d
from diffdet.ops._backend import published_mode

NORMS = ("FrozenBN", "GN", "BN", "")
"""Accepted ``norm`` names: frozen batch norm (the reference), GroupNorm(32), BatchNorm2d, none."""


def get_norm(norm: str, channels: int) -> nn.Module | None:
    """Build the norm layer named ``norm`` for ``channels`` channels.

    Args:
        norm: one of :data:`NORMS`. "GN" is GroupNorm with 32 groups (detectron2's choice), trainable,
            for training from scratch; "BN" is a trainable BatchNorm2d; "" means no norm.
        channels: number of channels C normalised.

    Returns:
        The norm module, or None for "".

    Raises:
        ValueError: if ``norm`` is unknown, or "GN" is asked for a C that 32 does not divide.
    """
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        if channels % 32 != 0:
            raise ValueError(f"norm 'GN' uses 32 groups and needs channels divisible by 32, got {channels}")
        return nn.GroupNorm(32, channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "":
        return None
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm it owns (detectron2 ``layers.Conv2d``).

    Inference (calls with autograd off, e.g. under ``torch.no_grad``) runs a FrozenBatchNorm2d folded
    into the convolution (weight * scale, bias * scale + shift, computed once in float64 and cached
    until a weight or statistic changes), and on the CPU the optional residual add and ReLU as oneDNN
    post-ops of the convolution (one pass over the output instead of three). The parameters and the
    state_dict keep the reference layout; calls with autograd on (training) run the unfolded ops.
    ``fold_at_inference = False`` (see :meth:`DiffusionDet.fuse_for_inference`) and the published mode
    (:func:`diffdet.set_backend`) run the unfolded ops always, as the published code does.

    Args:
        *args: as ``nn.Conv2d``.
        norm: the norm module applied to the convolution's output, or None.
        **kwargs: as ``nn.Conv2d``.
    """

    frozen_bn_folded = False
    """True once :func:`fold_frozen_batchnorm` merged the norm in."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.fold_at_inference = True
        self._folded: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (key, weight, bias)

    def forward(
        self, x: torch.Tensor, *, residual: torch.Tensor | None = None, relu: bool = False
    ) -> torch.Tensor:
        """Convolve, normalise, then add ``residual`` and apply ReLU when asked (in that order).

        Args:
            x (Tensor[B, Cin, H, W]): input feature map.
            residual (Tensor[B, Cout, H', W']): added to the normalised output (a ResNet shortcut, an
                FPN top-down map), or None.
            relu: apply ReLU last.

        Returns:
            Tensor[B, Cout, H', W'], in x's memory format on the CPU fast path.
        """
        if (
            self.fold_at_inference
            and not torch.is_grad_enabled()
            and self._foldable()
            and not published_mode()
        ):
            weight, bias = self.inference_weight_and_bias()
            if (
                self.padding_mode == "zeros"
                and not isinstance(self.padding, str)
                and _onednn_fusable(x, weight, residual)
            ):
                try:
                    return _onednn_conv(
                        x, weight, bias, residual, relu, self.padding, self.stride, self.dilation, self.groups
                    )
                except RuntimeError:
                    # The private op is not stable across torch releases: torch 2.11's oneDNN refuses
                    # some shapes (a 1x1 map: "could not create a memory"). The unfused ops follow.
                    pass
            x = self._conv_forward(x, weight, bias)
        else:
            x = self._conv_forward(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if residual is not None:
            x += residual
        return torch.relu_(x) if relu else x

    def _foldable(self) -> bool:
        return self.norm is None or isinstance(self.norm, FrozenBatchNorm2d)

    @torch.no_grad()
    def inference_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution's (weight, bias) with a FrozenBatchNorm2d folded in (the plain ones without).

        The folded pair is computed in float64, stored in the weight's dtype (weight channels-last) and
        cached; the cache is recomputed when the weight, the bias or a norm statistic is replaced or
        modified in place (optimizer step, ``load_state_dict``, ``to(dtype)``).

        Raises:
            ValueError: the norm is not a FrozenBatchNorm2d (a trainable norm cannot be folded).
        """
        if not self._foldable():
            raise ValueError(
                f"norm must be FrozenBatchNorm2d or None to fold, got {type(self.norm).__name__}"
            )
        if self.norm is None:
            return self.weight, self.bias
        tensors = [
            self.weight,
            self.norm.weight,
            self.norm.bias,
            self.norm.running_mean,
            self.norm.running_var,
        ]
        if self.bias is not None:
            tensors.append(self.bias)
        key = tuple(_identity(t) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            scale, shift = self.norm.scale_and_shift(torch.float64)
            weight = self.weight.double() * scale.view(-1, 1, 1, 1)
            bias = shift if self.bias is None else self.bias.double() * scale + shift
            weight = weight.to(self.weight.dtype).contiguous(memory_format=torch.channels_last)
            self._folded = (key, weight, bias.to(self.weight.dtype))
        return self._folded[1], self._folded[2]


def set_inference_folding(module: nn.Module, enabled: bool) -> nn.Module:
    """Turn the inference fold of every :class:`Conv2d` in ``module`` on (and warm its cache) or off.

    Args:
        module: a backbone, a detector, or any module holding Conv2d layers.
        enabled: True folds FrozenBN norms (and fuses post-ops on the CPU) whenever autograd is off;
            False always runs the unfolded ops, as the published code does.

    Returns:
        ``module``.
    """
    for conv in module.modules():
        if isinstance(conv, Conv2d):
            conv.fold_at_inference = enabled
            if enabled and conv._foldable():
                conv.inference_weight_and_bias()
    return module


def _identity(t: torch.Tensor) -> tuple:
    """Storage, version, dtype and device of ``t``: changes when ``t`` is replaced or written in place."""
    version = 0 if t.is_inference() else t._version  # inference tensors keep no version counter
    return (t.data_ptr(), version, t.dtype, t.device)


def _onednn_fusable(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """Whether oneDNN can run this convolution with its residual add and ReLU as post-ops."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype
        and x.dim() == 4
        and torch.backends.mkldnn.is_available()
        and (residual is None or residual.dtype == x.dtype)
    )


def _onednn_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    relu: bool,
    padding: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> torch.Tensor:
    """conv(x) [+ residual] [-> ReLU] in one oneDNN primitive (the ops PyTorch's inductor emits on
    the CPU). The post-ops apply to the float32 accumulator, so fp32 results equal the unfused ops'."""
    pointwise = torch.ops.mkldnn._convolution_pointwise
    padding, stride, dilation = list(padding), list(stride), list(dilation)
    unary = "relu" if relu else "none"
    if residual is None:
        return pointwise(x, weight, bias, padding, stride, dilation, groups, unary, [None], "")
    residual = residual.contiguous(memory_format=_memory_format(x))
    return pointwise.binary(
        x,
        residual,
        weight,
        bias,
        padding,
        stride,
        dilation,
        groups,
        "add",
        None,
        unary if relu else None,
        [None],
        "",
    )


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


def c2_msra_fill(module: nn.Conv2d) -> None:
    """detectron2's ``c2_msra_fill``: Kaiming-normal weights (fan_out, ReLU gain), zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """detectron2's ``c2_xavier_fill``: Kaiming-uniform weights with a = 1 (Caffe2 Xavier), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d that follows a convolution into that convolution, in place.

    Applies to each :class:`diffdet.modeling.backbone.conv.Conv2d` whose ``norm`` is a
    FrozenBatchNorm2d: weight' = weight * scale (per output channel), bias' = bias * scale + shift
    (bias taken as 0 when absent), computed in float64 and stored in the weight's dtype; ``norm``
    becomes None and ``frozen_bn_folded`` True (see :func:`has_folded_batchnorm`). The outputs equal
    the unfolded ones up to floating-point rounding.

    Folding is for inference: it changes the state_dict keys (``*.norm.*`` disappear, ``*.bias``
    appears), so save or export checkpoints before folding. Calling it twice folds nothing more.

    Args:
        module: any module, typically a detector or its backbone.

    Returns:
        The number of convolutions folded.
    """
    folded = 0
    for conv in module.modules():
        if not isinstance(conv, Conv2d) or not isinstance(conv.norm, FrozenBatchNorm2d):
            continue
        scale, shift = conv.norm.scale_and_shift(torch.float64)
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        conv.weight.copy_(weight.to(conv.weight.dtype))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        conv.norm = None
        conv.frozen_bn_folded = True
        folded += 1
    return folded


def has_folded_batchnorm(module: nn.Module) -> bool:
    """Whether :func:`fold_frozen_batchnorm` has folded any norm inside ``module``.

    Such a module's state_dict lacks the ``*.norm.*`` buffers, so it cannot be saved as a checkpoint.
    """
    return any(isinstance(m, Conv2d) and m.frozen_bn_folded for m in module.modules())
