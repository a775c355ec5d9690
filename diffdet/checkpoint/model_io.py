"""Models from and to checkpoint files: ``diffdet.load``, ``save_checkpoint``, strict state loading."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffdet.checkpoint.convert import (
    FORMAT,
    FORMAT_VERSION,
    RESERVED_KEYS,
    detect_layout,
    diffdet_to_reference,
    make_model_config,
    reference_to_diffdet,
)
from diffdet.checkpoint.presets import resolve
from diffdet.checkpoint.safe_io import atomic_save, torch_load
from diffdet.hardware import warn_if_bf16_is_emulated
from diffdet.modeling.backbone import has_folded_batchnorm
from diffdet.modeling.config import ModelConfig

_LISTED = 12  # keys shown per category in a mismatch error


class CheckpointMismatchError(ValueError):
    """A state_dict does not fit a model: missing keys, unexpected keys or shape mismatches."""


def _listing(label: str, items: list[str]) -> str:
    more = f", ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return f"{len(items)} {label}: {', '.join(items[:_LISTED])}{more}"


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with one error that lists every problem.

    Values are copied into the model's tensors, keeping the model's dtypes (the float64 schedule
    buffers stay float64).

    Args:
        model: the module to fill.
        state_dict: key -> tensor.

    Raises:
        CheckpointMismatchError (a ValueError): missing keys, unexpected keys or shape mismatches,
            each listed by name (shapes as checkpoint vs model).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = [
        _listing(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        raise CheckpointMismatchError("checkpoint does not match the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def model_payload(model: nn.Module, config: ModelConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The entries that make a dict a diffdet checkpoint ``diffdet.load`` reads.

    ``{"format": "diffdet", "version": 1, "model_config": dict, "model": state_dict}``; a training
    checkpoint adds its own entries beside these (see :data:`~diffdet.checkpoint.convert.RESERVED_KEYS`).

    Args:
        model: the detector.
        config: its ModelConfig (or the equivalent dict, validated).

    Raises:
        ValueError: the model's FrozenBN layers were folded (its state_dict lacks their buffers), or
            ``config`` has unknown fields.
    """
    if has_folded_batchnorm(model):
        raise ValueError(
            "model has FrozenBN folded into its convolutions (inference only); save it before folding"
        )
    if not isinstance(config, ModelConfig):
        config = make_model_config(config)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(config),
        "model": model.state_dict(),
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: ModelConfig | Mapping[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a diffdet checkpoint atomically (temp file, fsync, rename).

    Layout: :func:`model_payload` plus ``extra``.

    Args:
        path: destination file (parent directories are created).
        model: the detector; its state_dict is saved.
        config: its ModelConfig (or the equivalent dict).
        extra: other entries, e.g. training state (optimizer, scheduler, iteration, RNG states); only
            tensors, numbers, strings, None and dict/list/tuple of them, so that the file loads with
            ``weights_only=True``.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``extra`` uses a reserved key, or the model's FrozenBN layers were folded.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra must not use the reserved keys {clash}")
    return atomic_save({**model_payload(model, config), **extra}, path)


def save_reference_checkpoint(
    path: str | os.PathLike, model: nn.Module, config: ModelConfig | Mapping[str, Any]
) -> Path:
    """Write ``model`` in the reference's detectron2 layout ``{"model": state_dict}``, atomically.

    Args:
        path: destination file.
        model: the detector.
        config: its ModelConfig (or the equivalent dict).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: the model has no reference counterpart (see
            :func:`~diffdet.checkpoint.convert.diffdet_to_reference`) or was folded.
    """
    return atomic_save(diffdet_to_reference(model_payload(model, config)), path)


def _torch_load_model_file(path: str | os.PathLike) -> Any:
    if Path(path).suffix == ".pkl":
        raise ValueError(
            f"{path} is a detectron2 .pkl, which holds ImageNet backbone weights only: pass it to "
            "diffdet.checkpoint.load_backbone_weights (the trainer's --weights), not to diffdet.load"
        )
    return torch_load(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file in either layout, as a diffdet-layout dict.

    Args:
        path: a reference (detectron2 ``.pth``) or diffdet checkpoint.

    Returns:
        The diffdet-layout dict (a reference checkpoint is converted, with default overrides).

    Raises:
        ValueError: the file is a backbone ``.pkl`` or neither layout.
        FileNotFoundError, pickle.UnpicklingError: see :func:`~diffdet.checkpoint.safe_io.torch_load`.
    """
    checkpoint = _torch_load_model_file(path)
    return checkpoint if detect_layout(checkpoint) == "diffdet" else reference_to_diffdet(checkpoint)


def model_from_checkpoint(checkpoint: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Build the detector a checkpoint describes and load its weights strictly.

    Args:
        checkpoint: a loaded checkpoint in either layout.
        **overrides: ModelConfig fields to set (e.g. ``num_proposals``); for a reference checkpoint they
            may not contradict its shapes.

    Returns:
        The DiffusionDet, in train mode, on the CPU.

    Raises:
        ValueError: not a checkpoint, a bad override, or the weights do not fit
            (:class:`CheckpointMismatchError` lists missing/unexpected keys and shapes).
    """
    from diffdet.modeling.build import build_detector

    if detect_layout(checkpoint) == "reference":
        checkpoint = reference_to_diffdet(checkpoint, **overrides)
        overrides = {}
    config = make_model_config({**checkpoint["model_config"], **overrides})
    model = build_detector(config)
    load_state_dict_strict(model, checkpoint["model"])
    return model


def load(
    path_or_preset: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """A ready DiffusionDet from a checkpoint file or a preset name (``diffdet.load``).

    Reference (detectron2) and diffdet checkpoints are told apart by their keys. Files are read with
    ``torch.load(weights_only=True)``: nothing in them is executed. Presets resolve to files in
    ``$DIFFDET_WEIGHTS_DIR`` (default ``~/.cache/diffdet``); nothing is downloaded.

    Args:
        path_or_preset: a checkpoint path, or a preset of :data:`~diffdet.checkpoint.presets.PRESETS`
            ("coco_r50_500boxes", "coco_r50_300boxes", "coco_r101_500boxes", "coco_swinb", "lvis_r50",
            "lvis_r101", "lvis_swinb", "quickstart").
        device: where to put the model.
        dtype: floating dtype of the weights (e.g. torch.float16); None keeps float32. The diffusion
            schedule stays float64. bfloat16 on a CPU without bf16 arithmetic (no AMX/AVX512-BF16)
            warns once that it is emulated and several times slower than fp32, and runs bf16 anyway.
        **overrides: ModelConfig fields to change, e.g. ``num_proposals=300``.

    Returns:
        The DiffusionDet in eval mode, ready to detect: its inference fusions are on and warm (every
        FrozenBN folded into its convolution, channels-last backbone; see
        :meth:`~diffdet.modeling.detector.DiffusionDet.fuse_for_inference`), while its parameters and
        state_dict keep the reference layout (it trains and saves as any model).

    Raises:
        FileNotFoundError: no such file, or a preset's file is missing (the message says what to fetch
            from where and where to put it).
        ValueError: not a DiffusionDet checkpoint, or it does not fit the model (keys listed).
        pickle.UnpicklingError: the file holds objects other than tensors and plain containers.
    """
    path, preset = resolve(path_or_preset)
    checkpoint = _torch_load_model_file(path)
    if preset is not None and detect_layout(checkpoint) == "reference":
        overrides = {**preset.model_overrides, **overrides}
    model = model_from_checkpoint(checkpoint, **overrides)
    warn_if_bf16_is_emulated(device, dtype)
    return model.to(device=device, dtype=dtype).eval().fuse_for_inference()
