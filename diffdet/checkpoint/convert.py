"""The two checkpoint layouts, told apart by their keys, and lossless conversion between them.

- **reference**: a detectron2 checkpoint of the published code, ``{"model": state_dict, ...}``
  (``__author__``, ``iteration``... may sit beside it). The state_dict has 549 keys for R50 COCO
  (REFERENCE.md §3): 12 float64 diffusion buffers, ``backbone.*`` and ``head.*``.
- **diffdet**: ``{"format": "diffdet", "version": 1, "model_config": {...}, "model": state_dict, ...}``.
  diffdet's modules carry the reference's names, so the state_dict is the same mapping; the layout
  adds the :class:`~diffdet.modeling.config.ModelConfig` that the reference keeps in YAML, and may
  hold training state beside it.

A reference state_dict does not tell everything: the hyper-parameters it shows (depth, classes,
widths, stages, towers) are read from its shapes, the others (``num_proposals``, attention heads)
come from the caller or the defaults.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from diffdet.modeling.config import ModelConfig

FORMAT = "diffdet"
FORMAT_VERSION = 1
RESERVED_KEYS = ("format", "version", "model_config", "model")
"""Keys of a diffdet checkpoint with a fixed meaning; any others (training state) are kept as is."""

_STEM = "backbone.bottom_up.stem.conv1.weight"
_HEAD0 = "head.head_series.0.class_logits.weight"
_RESNET_DEPTH_BY_RES4_BLOCKS = {6: "R50", 23: "R101"}


def make_model_config(values: Mapping[str, Any]) -> ModelConfig:
    """``ModelConfig(**values)``, with a ValueError naming any field ModelConfig does not have."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ValueError(f"model config has unknown fields {unknown}")
    return ModelConfig(**values)


def detect_layout(checkpoint: Any) -> str:
    """Which layout a loaded checkpoint has.

    Args:
        checkpoint: the object ``torch.load`` returned.

    Returns:
        "diffdet" or "reference" (also for a bare reference state_dict without the ``model`` wrapper).

    Raises:
        ValueError: neither layout; the message lists what the object holds.
    """
    if isinstance(checkpoint, Mapping):
        if checkpoint.get("format") == FORMAT:
            version = checkpoint.get("version")
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"diffdet checkpoint version {version!r} is not supported (expected {FORMAT_VERSION})"
                )
            missing = [k for k in ("model_config", "model") if k not in checkpoint]
            if missing:
                raise ValueError(f"diffdet checkpoint lacks {missing}")
            return "diffdet"
        state = checkpoint.get("model", checkpoint)
        if isinstance(state, Mapping) and _STEM in state and _HEAD0 in state:
            return "reference"
        if isinstance(state, Mapping) and any(str(k).startswith("backbone.bottom_up.layers") for k in state):
            raise ValueError(
                "reference checkpoints with a Swin backbone are not supported (ResNet-50/101 only)"
            )
        keys = sorted(map(str, state))[:8] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            "not a DiffusionDet checkpoint: expected a diffdet checkpoint (key 'format' = 'diffdet') or a "
            f"reference one (a 'model' dict with {_STEM!r} and {_HEAD0!r}); found top-level keys "
            f"{sorted(map(str, checkpoint))[:8]}, model keys {keys}"
        )
    raise ValueError(f"not a DiffusionDet checkpoint: expected a dict, got {type(checkpoint).__name__}")


def reference_state_dict(checkpoint: Mapping[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """The state_dict of a reference checkpoint (``checkpoint["model"]``, or the bare mapping)."""
    state = checkpoint.get("model", checkpoint)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"reference checkpoint model entries must be tensors, got non-tensors at {bad[:5]}")
    return OrderedDict(state)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.fullmatch(k))})


def reference_model_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ModelConfig fields a reference state_dict determines, read from its keys and shapes.

    Args:
        state: reference-layout state_dict.

    Returns:
        dict with backbone ("R50"/"R101" from the res4 block count), num_classes, hidden_dim,
        dim_feedforward, num_heads, num_cls, num_reg, dim_dynamic, pooler_resolution, timesteps.

    Raises:
        ValueError: a key the reference always has is missing, or the shapes are inconsistent.
    """
    needed = [
        _STEM,
        _HEAD0,
        "head.head_series.0.linear1.weight",
        "head.head_series.0.inst_interact.norm1.weight",
    ]
    needed += ["head.head_series.0.inst_interact.out_layer.weight", "backbone.fpn_output2.weight", "betas"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"reference state_dict lacks {missing}")
    res4_blocks = _count(state, r"backbone\.bottom_up\.res4\.(\d+)\.conv1\.weight")
    if res4_blocks not in _RESNET_DEPTH_BY_RES4_BLOCKS:
        raise ValueError(
            f"reference backbone has {res4_blocks} res4 blocks; only R50 (6) and R101 (23) exist"
        )
    num_classes, hidden_dim = state[_HEAD0].shape
    out_layer = tuple(state["head.head_series.0.inst_interact.out_layer.weight"].shape)
    out_features, flat = out_layer
    bins = flat // hidden_dim
    resolution = round(bins**0.5)
    fpn_channels = state["backbone.fpn_output2.weight"].shape[0]
    if (
        resolution * resolution * hidden_dim != flat
        or out_features != hidden_dim
        or fpn_channels != hidden_dim
    ):
        raise ValueError(
            f"reference shapes are inconsistent: class_logits width {hidden_dim}, "
            f"out_layer {out_layer}, FPN channels {fpn_channels}"
        )
    return {
        "backbone": _RESNET_DEPTH_BY_RES4_BLOCKS[res4_blocks],
        "num_classes": int(num_classes),
        "hidden_dim": int(hidden_dim),
        "dim_feedforward": int(state["head.head_series.0.linear1.weight"].shape[0]),
        "num_heads": _count(state, r"head\.head_series\.(\d+)\.class_logits\.weight"),
        "num_cls": _count(state, r"head\.head_series\.0\.cls_module\.(\d+)\.bias"),
        "num_reg": _count(state, r"head\.head_series\.0\.reg_module\.(\d+)\.bias"),
        "dim_dynamic": int(state["head.head_series.0.inst_interact.norm1.weight"].shape[0]),
        "pooler_resolution": resolution,
        "timesteps": int(state["betas"].shape[0]),
    }


def reference_to_diffdet(checkpoint: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """Convert a reference checkpoint to diffdet's layout (values and dtypes unchanged).

    Args:
        checkpoint: a reference checkpoint (see :func:`detect_layout`).
        **overrides: ModelConfig fields the state_dict cannot tell, e.g. ``num_proposals=300``;
            they may not contradict what it does tell.

    Returns:
        ``{"format": "diffdet", "version": 1, "model_config": dict, "model": state_dict}``.

    Raises:
        ValueError: not a reference checkpoint, or an override contradicts the state_dict.
    """
    if detect_layout(checkpoint) != "reference":
        raise ValueError("checkpoint must be a reference checkpoint, got a diffdet one")
    state = reference_state_dict(checkpoint)
    inferred = reference_model_config(state)
    clash = {k: (v, inferred[k]) for k, v in overrides.items() if k in inferred and v != inferred[k]}
    if clash:
        raise ValueError(f"overrides contradict the checkpoint (given, checkpoint): {clash}")
    config = make_model_config({**inferred, **overrides})
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(config),
        "model": state,
    }


def diffdet_to_reference(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a diffdet checkpoint back to the reference layout ``{"model": state_dict}``.

    Only models the reference code can build convert: R50/R101, FrozenBN trunk, FPN without norm.

    Args:
        checkpoint: a diffdet checkpoint (see :func:`detect_layout`).

    Returns:
        ``{"model": state_dict}`` with the same tensors (values and dtypes unchanged).

    Raises:
        ValueError: not a diffdet checkpoint, or its model has no reference counterpart.
    """
    if detect_layout(checkpoint) != "diffdet":
        raise ValueError("checkpoint must be a diffdet checkpoint, got a reference one")
    config = checkpoint["model_config"]
    expected = {"backbone_norm": "FrozenBN", "fpn_norm": ""}
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if config.get("backbone") not in _RESNET_DEPTH_BY_RES4_BLOCKS.values():
        wrong["backbone"] = config.get("backbone")
    if wrong:
        raise ValueError(
            "the reference layout needs backbone R50/R101, backbone_norm 'FrozenBN' and fpn_norm '', "
            f"got {wrong}"
        )
    return {"model": OrderedDict(checkpoint["model"])}
