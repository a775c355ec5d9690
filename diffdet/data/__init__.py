"""diffdet.data: COCO-format datasets, the reference's transforms, loaders, and synthetic shapes.

- :mod:`diffdet.data.coco`: :class:`CocoDetection` (pycocotools, contiguous labels, crowd handling,
  image decoding with EXIF and mode conversion, clear errors for bad images and annotation files).
- :mod:`diffdet.data.crowdhuman`: :class:`CrowdHumanDetection` (odgt annotations, visible/full/head
  boxes, ignore regions) and :func:`detection_dataset`, which picks COCO or CrowdHuman by format.
- :mod:`diffdet.data.transforms`: flip, ResizeShortestEdge and the crop branch (training).
- :mod:`diffdet.data.lvis`: the LVIS-format checks (federated fields, images from ``coco_url``).
- :mod:`diffdet.data.loader`: the resumable training stream, aspect-ratio grouping, DDP sharding.
- :mod:`diffdet.data.repeat_factor`: LVIS repeat-factor sampling (factors and index stream).
- :mod:`diffdet.data.synthetic`: the seeded shapes dataset of the quickstart.
"""

from __future__ import annotations

from diffdet.data.coco import BadAnnotationError, BadImageError, CocoDetection, load_coco, read_image
from diffdet.data.crowdhuman import CrowdHumanDetection, detection_dataset, read_odgt
from diffdet.data.loader import TrainBatchSampler, build_test_loader, build_train_loader, collate
from diffdet.data.transforms import TrainTransform

__all__ = [
    "BadAnnotationError",
    "BadImageError",
    "CocoDetection",
    "CrowdHumanDetection",
    "TrainBatchSampler",
    "TrainTransform",
    "build_test_loader",
    "build_train_loader",
    "collate",
    "detection_dataset",
    "load_coco",
    "read_image",
    "read_odgt",
]
