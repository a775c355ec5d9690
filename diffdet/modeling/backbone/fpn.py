"""Feature Pyramid Network on a ResNet or Swin trunk (detectron2's ``FPN`` without the unused p6).

Layout as the reference: the trunk is ``bottom_up``; per level l there is ``fpn_lateral{l}`` (1×1)
and ``fpn_output{l}`` (3×3), both with bias and without norm. Top-down pathway (FPN paper, Fig. 3):
m5 = lateral5(c5); m_l = lateral_l(c_l) + upsample2_nearest(m_{l+1}); p_l = output_l(m_l).
The reference's LastLevelMaxPool p6 is dropped: the head pools only p2..p5, and it has no parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from diffdet.modeling.backbone.conv import Conv2d, c2_xavier_fill, get_norm
from diffdet.modeling.shape_spec import ShapeSpec


class FPN(nn.Module):
    """Top-down feature pyramid over the trunk's stage outputs.

    Args:
        bottom_up: the trunk; its ``output_shape()`` must contain ``in_features`` with strides that
            double from one feature to the next.
        in_features: trunk features used, finest first (``("res2", "res3", "res4", "res5")``).
        out_channels: channels of every pyramid level (256).
        norm: norm of the lateral and output convs; "" (the reference) gives convs with bias and no
            norm, any other name gives convs without bias followed by that norm.

    Outputs are named ``p{log2(stride)}``: p2..p5 at strides 4, 8, 16, 32 for ResNet res2..res5
    or Swin swin0..swin3.

    Raises:
        ValueError: if an ``in_features`` name is not a trunk output or the strides are not
            consecutive powers of 2.
    """

    def __init__(
        self,
        bottom_up: nn.Module,
        in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        out_channels: int = 256,
        norm: str = "",
    ) -> None:
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"in_features must be outputs of bottom_up {tuple(shapes)}, got {missing}")
        strides = [shapes[f].stride for f in in_features]
        if any(strides[i + 1] != 2 * strides[i] for i in range(len(strides) - 1)) or any(
            2 ** int(math.log2(s)) != s for s in strides
        ):
            raise ValueError(f"in_features must have strides doubling from a power of 2, got {strides}")
        self.in_features = tuple(in_features)
        self.out_channels = out_channels
        self._out_shapes: dict[str, ShapeSpec] = {}
        lateral_convs, output_convs = [], []
        for name in self.in_features:
            level = int(math.log2(shapes[name].stride))
            lateral = Conv2d(
                shapes[name].channels,
                out_channels,
                1,
                bias=norm == "",
                norm=get_norm(norm, out_channels),
            )
            output = Conv2d(
                out_channels, out_channels, 3, padding=1, bias=norm == "", norm=get_norm(norm, out_channels)
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
            self._out_shapes[f"p{level}"] = ShapeSpec(channels=out_channels, stride=shapes[name].stride)
        # Plain lists (not ModuleList) keep the state_dict names fpn_lateral{l}/fpn_output{l} only.
        # Coarsest first, the order of the top-down pass.
        self._lateral_convs = lateral_convs[::-1]
        self._output_convs = output_convs[::-1]
        # Registered after the convs, as detectron2 does, so the state_dict order matches the reference's.
        self.bottom_up = bottom_up

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (the coarsest stride, 32)."""
        return max(s.stride for s in self._out_shapes.values())

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each pyramid level, finest first."""
        return dict(self._out_shapes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the pyramid.

        Args:
            x (Tensor[B, 3, H, W]): normalised, padded images; H and W multiples of
                :attr:`size_divisibility`.

        Returns:
            dict ``p2``..``p5`` (finest first) -> Tensor[B, out_channels, H/stride, W/stride].

        Raises:
            ValueError: if ``x`` is not [B, 3, H, W] with H and W multiples of size_divisibility.
        """
        d = self.size_divisibility
        if x.dim() != 4 or x.shape[-2] % d or x.shape[-1] % d:
            raise ValueError(f"x must be [B, C, H, W] with H and W multiples of {d}, got {tuple(x.shape)}")
        features = self.bottom_up(x)
        names = self.in_features[::-1]
        top_down = self._lateral_convs[0](features[names[0]])
        results = [self._output_convs[0](top_down)]
        for name, lateral, output in zip(
            names[1:], self._lateral_convs[1:], self._output_convs[1:], strict=True
        ):
            upsampled = F.interpolate(top_down, scale_factor=2.0, mode="nearest")
            top_down = lateral(features[name], residual=upsampled)
            results.insert(0, output(top_down))
        return dict(zip(self._out_shapes, results, strict=True))
