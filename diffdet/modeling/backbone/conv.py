"""Conv2d with an attached norm (detectron2's layout), the norm factory and detectron2's weight fills.

The reference's state_dict names each trunk norm ``<conv>.norm.*`` because detectron2's ``Conv2d``
owns the norm that follows it; this module keeps that layout so reference checkpoints load by name.
"""

from __future__ import annotations

import torch
from torch import nn

from diffdet.modeling.backbone.frozen_bn import FrozenBatchNorm2d

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

    Args:
        *args: as ``nn.Conv2d``.
        norm: the norm module applied to the convolution's output, or None.
        **kwargs: as ``nn.Conv2d``.
    """

    frozen_bn_folded = False
    """True once :func:`~diffdet.modeling.backbone.frozen_bn.fold_frozen_batchnorm` merged the norm in."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, then normalise.

        Args:
            x (Tensor[B, Cin, H, W]): input feature map.

        Returns:
            Tensor[B, Cout, H', W'].
        """
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        return x


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
