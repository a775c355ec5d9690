"""The two checkpoint layouts, told apart by their keys, and lossless conversion between them.

- **reference**: a detectron2 checkpoint of the published code, ``{"model": state_dict, ...}``
  (``__author__``, ``iteration``... may sit beside it). The state_dict has 549 keys for R50 COCO
  (REFERENCE.md §3): 12 float64 diffusion buffers, ``backbone.*`` and ``head.*``; 641 for Swin-B
  (§9); the LVIS models add the criterion's ``criterion.fed_loss_cls_weights`` (§10).
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

from diffdet.modeling.backbone import SWINS
from diffdet.modeling.config import ModelConfig

FORMAT = "diffdet"
FORMAT_VERSION = 1
RESERVED_KEYS = ("format", "version", "model_config", "model")
"""Keys of a diffdet checkpoint with a fixed meaning; any others (training state) are kept as is."""

_STEM = "backbone.bottom_up.stem.conv1.weight"
_PATCH = "backbone.bottom_up.patch_embed.proj.weight"
_HEAD0 = "head.head_series.0.class_logits.weight"
_FED_LOSS = "criterion.fed_loss_cls_weights"
_RESNET_DEPTH_BY_RES4_BLOCKS = {6: "R50", 23: "R101"}
# The Swin sizes the published code builds, by the name its configs use (B-22k rather than B: the same
# architecture, and the one the published Swin-B models were trained from).
_REFERENCE_SWINS = ("SwinT", "SwinS", "SwinB-22k", "SwinB-22k-384", "SwinL-22k", "SwinL-22k-384")


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
        if isinstance(state, Mapping) and (_STEM in state or _PATCH in state) and _HEAD0 in state:
            return "reference"
        keys = sorted(map(str, state))[:8] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            "not a DiffusionDet checkpoint: expected a diffdet checkpoint (key 'format' = 'diffdet') or a "
            f"reference one (a 'model' dict with {_HEAD0!r} and {_STEM!r} or {_PATCH!r}); "
            "found top-level keys "
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


def _resnet_name(state: Mapping[str, torch.Tensor]) -> str:
    res4_blocks = _count(state, r"backbone\.bottom_up\.res4\.(\d+)\.conv1\.weight")
    if res4_blocks not in _RESNET_DEPTH_BY_RES4_BLOCKS:
        raise ValueError(
            f"reference backbone has {res4_blocks} res4 blocks; only R50 (6) and R101 (23) exist"
        )
    return _RESNET_DEPTH_BY_RES4_BLOCKS[res4_blocks]


def _swin_name(state: Mapping[str, torch.Tensor]) -> str:
    """The published Swin size whose widths, depths, heads and window the keys and shapes show."""
    stages = _count(state, r"backbone\.bottom_up\.layers\.(\d+)\.blocks\.0\.norm1\.weight")
    depths = tuple(
        _count(state, rf"backbone\.bottom_up\.layers\.{i}\.blocks\.(\d+)\.norm1\.weight")
        for i in range(stages)
    )
    table = "backbone.bottom_up.layers.{}.blocks.0.attn.relative_position_bias_table"
    missing = [table.format(i) for i in range(stages) if table.format(i) not in state]
    if missing or not stages:
        raise ValueError(f"reference Swin state_dict lacks {missing or ['backbone.bottom_up.layers.0.*']}")
    heads = tuple(int(state[table.format(i)].shape[1]) for i in range(stages))
    window = round(((state[table.format(0)].shape[0]) ** 0.5 + 1) / 2)
    found = (int(state[_PATCH].shape[0]), depths, heads, window)
    for name in _REFERENCE_SWINS:
        spec = SWINS[name]
        if (spec.embed_dim, spec.depths, spec.num_heads, spec.window) == found:
            return name
    raise ValueError(
        "reference Swin backbone (embed_dim, depths, heads, window) = "
        f"{found} is none of the published sizes {_REFERENCE_SWINS}"
    )


def _same_backbone(a: Any, b: Any) -> bool:
    """Equal names, or two names of one Swin architecture (SwinB and SwinB-22k)."""
    return a == b or (a in SWINS and b in SWINS and SWINS[a] == SWINS[b])


def reference_model_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ModelConfig fields a reference state_dict determines, read from its keys and shapes.

    Args:
        state: reference-layout state_dict.

    Returns:
        dict with backbone ("R50"/"R101" from the res4 block count, or the published Swin size from
        the Swin widths, depths, heads and window: "SwinB-22k" for Swin-B), num_classes, hidden_dim,
        dim_feedforward, num_heads, num_cls, num_reg, dim_dynamic, pooler_resolution, timesteps, and
        ``loss`` = {"use_fed_loss": True} when the criterion's federated-loss weights are present.

    Raises:
        ValueError: a key the reference always has is missing, or the shapes are inconsistent.
    """
    needed = [
        _STEM if _PATCH not in state else _PATCH,
        _HEAD0,
        "head.head_series.0.linear1.weight",
        "head.head_series.0.inst_interact.norm1.weight",
    ]
    needed += ["head.head_series.0.inst_interact.out_layer.weight", "backbone.fpn_output2.weight", "betas"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"reference state_dict lacks {missing}")
    backbone = _swin_name(state) if _PATCH in state else _resnet_name(state)
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
    config = {
        "backbone": backbone,
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
    if _FED_LOSS in state:
        if tuple(state[_FED_LOSS].shape) != (num_classes,):
            raise ValueError(
                f"reference {_FED_LOSS} must have one weight per class ({num_classes}), "
                f"got {tuple(state[_FED_LOSS].shape)}"
            )
        config["loss"] = {"use_fed_loss": True}
    return config


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
    clash = {
        k: (v, inferred[k])
        for k, v in overrides.items()
        if k in inferred and not (v == inferred[k] or (k == "backbone" and _same_backbone(v, inferred[k])))
    }
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

    Only models the reference code can build convert: R50/R101 with a FrozenBN trunk or a published
    Swin size, and an FPN without norm.

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
    backbone = config.get("backbone")
    swin = any(_same_backbone(backbone, name) for name in _REFERENCE_SWINS)
    expected = {"fpn_norm": ""} if swin else {"backbone_norm": "FrozenBN", "fpn_norm": ""}
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if not swin and backbone not in _RESNET_DEPTH_BY_RES4_BLOCKS.values():
        wrong["backbone"] = backbone
    if wrong:
        raise ValueError(
            "the reference layout needs backbone R50/R101 (with backbone_norm 'FrozenBN') or a published "
            f"Swin size {_REFERENCE_SWINS}, and fpn_norm '', got {wrong}"
        )
    return {"model": OrderedDict(checkpoint["model"])}
