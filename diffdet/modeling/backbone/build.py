"""Named backbones with an FPN: the reference's R50, R101 and Swin sizes, and small ones for CPU work."""

from __future__ import annotations

from dataclasses import dataclass

from diffdet.modeling.backbone.conv import NORMS
from diffdet.modeling.backbone.fpn import FPN
from diffdet.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from diffdet.modeling.backbone.swin import SwinTransformer

TRUNK_NORMS = ("FrozenBN", "GN", "BN")
"""Norms of the ResNet trunk, whose convolutions have no bias and so always need one."""


@dataclass(frozen=True)
class ResNetSpec:
    """Depth and widths of one ResNet variant.

    Attributes:
        blocks: blocks in res2, res3, res4, res5.
        bottleneck: bottleneck blocks (R50/R101) or basic two-3×3 blocks (R18).
        res2_out_channels: output channels of res2; each later stage doubles it.
        stem_channels: output channels of the stem.
    """

    blocks: tuple[int, int, int, int]
    bottleneck: bool
    res2_out_channels: int
    stem_channels: int = 64


RESNETS: dict[str, ResNetSpec] = {
    # 11.2 M trunk parameters (R50: 23.5 M) and under half its FLOPs: the option for CPU training and tests.
    "R18": ResNetSpec(blocks=(2, 2, 2, 2), bottleneck=False, res2_out_channels=64),
    # R18 at half width: a quarter of its FLOPs, for the CPU quickstart's small images.
    "R18-half": ResNetSpec(blocks=(2, 2, 2, 2), bottleneck=False, res2_out_channels=32, stem_channels=32),
    "R50": ResNetSpec(blocks=(3, 4, 6, 3), bottleneck=True, res2_out_channels=256),
    "R101": ResNetSpec(blocks=(3, 4, 23, 3), bottleneck=True, res2_out_channels=256),
}
"""ResNet names accepted by :func:`build_resnet` and :func:`build_backbone`."""


@dataclass(frozen=True)
class SwinSpec:
    """One Swin Transformer size (the published ``size2config``, REFERENCE.md §9).

    Attributes:
        embed_dim: C, channels of stage 0 (stage i has C·2^i).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window: window side ws.
        drop_path_rate: stochastic depth of the last block (linear from 0 over all blocks).
    """

    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window: int = 7
    drop_path_rate: float = 0.3


_SWIN_B = SwinSpec(128, (2, 2, 18, 2), (4, 8, 16, 32))
_SWIN_L = SwinSpec(192, (2, 2, 18, 2), (6, 12, 24, 48))
SWINS: dict[str, SwinSpec] = {
    "SwinT": SwinSpec(96, (2, 2, 6, 2), (3, 6, 12, 24), drop_path_rate=0.2),
    "SwinS": SwinSpec(96, (2, 2, 18, 2), (3, 6, 12, 24), drop_path_rate=0.2),
    # B and B-22k differ only in the ImageNet file the published code names (and never opens): the
    # published DiffusionDet Swin-B models use "B-22k" with the ImageNet-22k weights.
    "SwinB": _SWIN_B,
    "SwinB-22k": _SWIN_B,
    "SwinB-22k-384": SwinSpec(128, (2, 2, 18, 2), (4, 8, 16, 32), window=12),
    "SwinL-22k": _SWIN_L,
    "SwinL-22k-384": SwinSpec(192, (2, 2, 18, 2), (6, 12, 24, 48), window=12),
    # Not published: a quarter of Swin-T's width with head_dim 32 as in every published size, for
    # tests and CPU work.
    "SwinNano": SwinSpec(32, (2, 2, 2, 2), (1, 2, 4, 8), drop_path_rate=0.1),
}
"""Swin names accepted by :func:`build_swin` and :func:`build_backbone` (the published sizes T, S, B,
B-22k, B-22k-384, L-22k, L-22k-384 prefixed with "Swin", and the small SwinNano)."""

BACKBONES: tuple[str, ...] = (*RESNETS, *SWINS)
"""Every name :func:`build_backbone` accepts."""


def build_swin(name: str) -> SwinTransformer:
    """Build the named Swin trunk with outputs swin0..swin3, as the published
    ``build_swintransformer_backbone`` does (``frozen_stages=-1``: every parameter trains).

    Args:
        name: a key of :data:`SWINS`.

    Returns:
        The SwinTransformer, initialised as the published ``init_weights``.

    Raises:
        ValueError: ``name`` is not a Swin size.
    """
    if name not in SWINS:
        raise ValueError(f"name must be one of {tuple(SWINS)}, got {name!r}")
    spec = SWINS[name]
    return SwinTransformer(
        spec.embed_dim, spec.depths, spec.num_heads, window=spec.window, drop_path_rate=spec.drop_path_rate
    )


def build_resnet(
    name: str, *, norm: str = "FrozenBN", freeze_at: int = 2, stride_in_1x1: bool = False
) -> ResNet:
    """Build the named ResNet trunk in detectron2's layout, returning res2..res5.

    Args:
        name: a key of :data:`RESNETS` ("R18", "R18-half", "R50", "R101").
        norm: "FrozenBN" (the reference, for ImageNet or reference weights), "GN" (trainable
            GroupNorm(32), for training from scratch with ``freeze_at=0``) or "BN".
        freeze_at: see :class:`~diffdet.modeling.backbone.resnet.ResNet` (2 freezes stem and res2).
        stride_in_1x1: bottleneck stride in the first 1×1 conv (MSRA weights); False puts it in the
            3×3 conv as torchvision and the reference do. Ignored by basic blocks.

    Returns:
        The ResNet, with weights initialised by detectron2's ``c2_msra_fill``.

    Raises:
        ValueError: if ``name`` or ``norm`` is unknown, or ``freeze_at`` is out of [0, 5].
    """
    if name not in RESNETS:
        raise ValueError(f"name must be one of {tuple(RESNETS)}, got {name!r}")
    if norm not in TRUNK_NORMS:
        raise ValueError(f"norm must be one of {TRUNK_NORMS}, got {norm!r}")
    spec = RESNETS[name]
    stem = BasicStem(3, spec.stem_channels, norm=norm)
    in_channels, out_channels, bottleneck_channels = stem.out_channels, spec.res2_out_channels, 64
    stages = []
    for k, count in enumerate(spec.blocks):
        blocks = []
        for i in range(count):
            stride = 2 if k > 0 and i == 0 else 1
            if spec.bottleneck:
                block = BottleneckBlock(
                    in_channels,
                    out_channels,
                    bottleneck_channels=bottleneck_channels,
                    stride=stride,
                    norm=norm,
                    stride_in_1x1=stride_in_1x1,
                )
            else:
                block = BasicBlock(in_channels, out_channels, stride=stride, norm=norm)
            blocks.append(block)
            in_channels = out_channels
        stages.append(blocks)
        out_channels, bottleneck_channels = 2 * out_channels, 2 * bottleneck_channels
    return ResNet(stem, stages, out_features=("res2", "res3", "res4", "res5"), freeze_at=freeze_at)


def build_backbone(
    name: str,
    *,
    norm: str = "FrozenBN",
    freeze_at: int = 2,
    out_channels: int = 256,
    fpn_norm: str = "",
    stride_in_1x1: bool = False,
) -> FPN:
    """Build the named ResNet or Swin with an FPN on its four outputs: the detector's ``backbone`` (p2..p5).

    The defaults reproduce the reference (``build_resnet_fpn_backbone`` with FrozenBN, FREEZE_AT 2,
    STRIDE_IN_1X1 False, FPN.OUT_CHANNELS 256, FPN.NORM ""; ``build_swintransformer_fpn_backbone``
    on swin0..swin3), so a reference checkpoint loads by name.

    Args:
        name: a key of :data:`RESNETS` or :data:`SWINS`.
        norm: trunk norm, see :func:`build_resnet`; ignored by Swin (LayerNorms only).
        freeze_at: see :func:`build_resnet`; ignored by Swin, as the published Swin builder ignores
            FREEZE_AT (every Swin parameter trains).
        out_channels: channels of every pyramid level.
        fpn_norm: norm of the FPN convs; "" (reference) or e.g. "GN" for training from scratch.
        stride_in_1x1: see :func:`build_resnet`; ignored by Swin.

    Returns:
        The FPN, whose ``bottom_up`` is the ResNet or the SwinTransformer.

    Raises:
        ValueError: if ``name``, ``norm`` or ``fpn_norm`` is unknown.
    """
    if fpn_norm not in NORMS:
        raise ValueError(f"fpn_norm must be one of {NORMS}, got {fpn_norm!r}")
    if name in SWINS:
        trunk = build_swin(name)
        return FPN(trunk, in_features=tuple(trunk.output_shape()), out_channels=out_channels, norm=fpn_norm)
    if name not in RESNETS:
        raise ValueError(f"name must be one of {BACKBONES}, got {name!r}")
    bottom_up = build_resnet(name, norm=norm, freeze_at=freeze_at, stride_in_1x1=stride_in_1x1)
    return FPN(
        bottom_up, in_features=("res2", "res3", "res4", "res5"), out_channels=out_channels, norm=fpn_norm
    )
