"""ResNet in detectron2's layout: ``stem.conv1`` and stages ``res2``..``res5`` of numbered blocks.

Module names mirror detectron2 (``res3.0.conv2.norm.running_var``, ``res4.0.shortcut.weight``) so that
the reference checkpoints and detectron2's ImageNet ``.pkl`` backbones load by name. Every trunk
convolution is a :class:`~diffdet.modeling.backbone.conv.Conv2d` without bias followed by its norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from diffdet.modeling.backbone.conv import Conv2d, c2_msra_fill, get_norm
from diffdet.modeling.backbone.frozen_bn import FrozenBatchNorm2d
from diffdet.modeling.shape_spec import ShapeSpec


class _Block(nn.Module):
    """Shared parts of the residual blocks: output sizes and freezing."""

    in_channels: int
    out_channels: int
    stride: int

    def freeze(self) -> _Block:
        """Stop training this block: parameters get requires_grad False, BatchNorms become frozen."""
        for p in self.parameters():
            p.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self

    def _init_convs(self) -> None:
        for m in self.modules():
            if isinstance(m, Conv2d):
                c2_msra_fill(m)


class BasicStem(_Block):
    """7×7 stride-2 convolution + norm + ReLU, then 3×3 stride-2 max pool (output stride 4).

    Args:
        in_channels: image channels (3).
        out_channels: stem width (64 in every torchvision/detectron2 ResNet).
        norm: norm name, see :func:`~diffdet.modeling.backbone.conv.get_norm`.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, 4
        self.conv1 = Conv2d(
            in_channels, out_channels, 7, stride=2, padding=3, bias=False, norm=get_norm(norm, out_channels)
        )
        self._init_convs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor[B, Cin, H, W] -> Tensor[B, Cout, ceil(H/4), ceil(W/4)]."""
        x = self.conv1(x, relu=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(_Block):
    """1×1 reduce, 3×3, 1×1 expand, each followed by a norm, plus a projection shortcut when needed.

    Args:
        in_channels: input channels.
        out_channels: output channels (4 × ``bottleneck_channels`` in a standard ResNet).
        bottleneck_channels: width of the 3×3 convolution.
        stride: spatial stride of the block (1 or 2).
        norm: norm name.
        stride_in_1x1: put the stride in the first 1×1 conv (MSRA/Caffe2 weights) instead of in the
            3×3 conv (torchvision weights, the reference's setting).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        norm: str = "FrozenBN",
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        b = bottleneck_channels
        self.conv1 = Conv2d(in_channels, b, 1, stride=stride_1x1, bias=False, norm=get_norm(norm, b))
        self.conv2 = Conv2d(b, b, 3, stride=stride_3x3, padding=1, bias=False, norm=get_norm(norm, b))
        self.conv3 = Conv2d(b, out_channels, 1, bias=False, norm=get_norm(norm, out_channels))
        self._init_convs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor[B, Cin, H, W] -> Tensor[B, Cout, ceil(H/stride), ceil(W/stride)]."""
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(x, relu=True)
        out = self.conv2(out, relu=True)
        return self.conv3(out, residual=shortcut, relu=True)


class BasicBlock(_Block):
    """Two 3×3 convolutions with norms (ResNet-18/34), plus a projection shortcut when needed.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: spatial stride of the block, applied by the first conv (1 or 2).
        norm: norm name.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "FrozenBN"
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        c = out_channels
        self.conv1 = Conv2d(in_channels, c, 3, stride=stride, padding=1, bias=False, norm=get_norm(norm, c))
        self.conv2 = Conv2d(c, c, 3, padding=1, bias=False, norm=get_norm(norm, c))
        self._init_convs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor[B, Cin, H, W] -> Tensor[B, Cout, ceil(H/stride), ceil(W/stride)]."""
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(x, relu=True)
        return self.conv2(out, residual=shortcut, relu=True)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Conv2d | None:
    if in_channels == out_channels and stride == 1:
        return None
    return Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, norm=get_norm(norm, out_channels))


class ResNet(nn.Module):
    """A stem and the stages ``res2``..``res5`` (strides 4, 8, 16, 32), returning the named stage outputs.

    Args:
        stem: the stem module (output stride 4).
        stages: blocks of res2, res3, ... in order; stage k is registered as ``res{k + 2}``.
        out_features: names of the stage outputs :meth:`forward` returns.
        freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 also freezes res2..res{k}
            (detectron2's ``FREEZE_AT``; the reference uses 2).

    Raises:
        ValueError: if ``out_features`` names a stage that does not exist, or ``freeze_at`` is out of
            [0, number of stages + 1].
    """

    def __init__(
        self,
        stem: BasicStem,
        stages: Sequence[Sequence[_Block]],
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stage_names = tuple(f"res{k + 2}" for k in range(len(stages)))
        unknown = [f for f in out_features if f not in self.stage_names]
        if unknown:
            raise ValueError(f"out_features must name stages {self.stage_names}, got unknown {unknown}")
        if not 0 <= freeze_at <= len(stages) + 1:
            raise ValueError(f"freeze_at must be in [0, {len(stages) + 1}], got {freeze_at}")
        self.out_features = tuple(out_features)
        self._shapes: dict[str, ShapeSpec] = {}
        stride, channels = stem.stride, stem.out_channels
        for name, blocks in zip(self.stage_names, stages, strict=True):
            self.add_module(name, nn.Sequential(*blocks))
            for block in blocks:
                stride, channels = stride * block.stride, block.out_channels
            self._shapes[name] = ShapeSpec(channels=channels, stride=stride)
        self.in_channels = stem.in_channels
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> ResNet:
        """Freeze the stem (freeze_at >= 1) and res2..res{freeze_at} (see the class docstring)."""
        if freeze_at >= 1:
            self.stem.freeze()
        for k, name in enumerate(self.stage_names, start=2):
            if freeze_at >= k:
                for block in getattr(self, name):
                    block.freeze()
        return self

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each feature in ``out_features``."""
        return {name: self._shapes[name] for name in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the trunk.

        Args:
            x (Tensor[B, Cin, H, W]): normalised images.

        Returns:
            dict name -> Tensor[B, C, ceil(H/stride), ceil(W/stride)] for each of ``out_features``.

        Raises:
            ValueError: if ``x`` is not [B, Cin, H, W].
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
            if len(outputs) == len(self.out_features):
                break
        return outputs
