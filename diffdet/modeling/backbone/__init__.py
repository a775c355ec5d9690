"""ResNet + FPN backbone in detectron2's layout, FrozenBatchNorm2d and its folding for inference."""

from diffdet.modeling.backbone.build import RESNETS, TRUNK_NORMS, build_backbone, build_resnet
from diffdet.modeling.backbone.conv import NORMS, Conv2d, get_norm, set_inference_folding
from diffdet.modeling.backbone.fpn import FPN
from diffdet.modeling.backbone.frozen_bn import FrozenBatchNorm2d, fold_frozen_batchnorm, has_folded_batchnorm
from diffdet.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

__all__ = [
    "FPN",
    "NORMS",
    "RESNETS",
    "TRUNK_NORMS",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "Conv2d",
    "FrozenBatchNorm2d",
    "ResNet",
    "build_backbone",
    "build_resnet",
    "fold_frozen_batchnorm",
    "get_norm",
    "has_folded_batchnorm",
    "set_inference_folding",
]
