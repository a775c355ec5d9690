"""``build_detector``: the one constructor of a DiffusionDet from its configuration."""

from __future__ import annotations

from diffdet.modeling.config import ModelConfig
from diffdet.modeling.detector import DiffusionDet


def build_detector(cfg: ModelConfig) -> DiffusionDet:
    """Build a freshly initialised DiffusionDet.

    The backbone gets detectron2's initialisation (MSRA fill for the trunk, xavier for the FPN) and
    the head the reference's (xavier on every matrix, class-logit bias -log((1 - p) / p)). Module and
    buffer names match the reference checkpoint, so its ``model`` state_dict loads strictly.

    Args:
        cfg: the model hyper-parameters.

    Returns:
        The detector in train mode, on the CPU, float32 (schedule buffers float64).

    Raises:
        ValueError: ``cfg`` is not a ModelConfig.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    return DiffusionDet(cfg)
