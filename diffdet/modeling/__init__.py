"""diffdet.modeling: backbone, dynamic head, diffusion schedule, DDIM sampler and the detector.

Public API: :class:`ModelConfig`, :func:`build_detector` -> :class:`DiffusionDet`, and
:class:`CudaGraphSampler` to replay the whole detection of fixed-size batches from a CUDA graph.
"""

from diffdet.modeling.build import build_detector
from diffdet.modeling.config import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, ModelConfig
from diffdet.modeling.cuda_graph import CudaGraphSampler
from diffdet.modeling.detector import DiffusionDet

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "CudaGraphSampler",
    "DiffusionDet",
    "ModelConfig",
    "build_detector",
]
