"""ResNet or Swin + FPN backbones in the reference's layout; FrozenBatchNorm2d and its inference folding."""

from diffdet.modeling.backbone.build import (
    BACKBONES,
    RESNETS,
    SWINS,
    TRUNK_NORMS,
    SwinSpec,
    build_backbone,
    build_resnet,
    build_swin,
)
from diffdet.modeling.backbone.conv import (
    NORMS,
    Conv2d,
    fold_frozen_batchnorm,
    get_norm,
    has_folded_batchnorm,
    set_inference_folding,
)
from diffdet.modeling.backbone.fpn import FPN
from diffdet.modeling.backbone.frozen_bn import FrozenBatchNorm2d
from diffdet.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from diffdet.modeling.backbone.swin import SwinTransformer

__all__ = [
    "BACKBONES",
    "FPN",
    "NORMS",
    "RESNETS",
    "SWINS",
    "TRUNK_NORMS",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "Conv2d",
    "FrozenBatchNorm2d",
    "ResNet",
    "SwinSpec",
    "SwinTransformer",
    "build_backbone",
    "build_resnet",
    "build_swin",
    "fold_frozen_batchnorm",
    "get_norm",
    "has_folded_batchnorm",
    "set_inference_folding",
]
