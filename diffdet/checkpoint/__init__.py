"""Checkpoint I/O: ``diffdet.load``, diffdet and reference (detectron2) layouts, backbone weights.

Nothing here executes code from a file: torch files load with ``weights_only=True`` and detectron2's
``.pkl`` backbones through an unpickler that admits numpy arrays and plain containers only.
"""

from diffdet.checkpoint.backbone_weights import (
    BackboneWeightsReport,
    load_backbone_weights,
    read_backbone_weights,
)
from diffdet.checkpoint.convert import (
    detect_layout,
    diffdet_to_reference,
    reference_model_config,
    reference_to_diffdet,
)
from diffdet.checkpoint.model_io import (
    CheckpointMismatchError,
    load,
    load_state_dict_strict,
    model_from_checkpoint,
    model_payload,
    read_checkpoint,
    save_checkpoint,
    save_reference_checkpoint,
)
from diffdet.checkpoint.presets import PRESETS, weights_dir
from diffdet.checkpoint.safe_io import atomic_save, load_pickle, torch_load

__all__ = [
    "PRESETS",
    "BackboneWeightsReport",
    "CheckpointMismatchError",
    "atomic_save",
    "detect_layout",
    "diffdet_to_reference",
    "load",
    "load_backbone_weights",
    "load_pickle",
    "load_state_dict_strict",
    "model_from_checkpoint",
    "model_payload",
    "read_backbone_weights",
    "read_checkpoint",
    "reference_model_config",
    "reference_to_diffdet",
    "save_checkpoint",
    "save_reference_checkpoint",
    "torch_load",
    "weights_dir",
]
