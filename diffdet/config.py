"""Top-level configuration: dataclasses, YAML files under ``configs/`` and ``key=value`` overrides.

A YAML file holds any subset of the :class:`Config` tree; ``_base_: other.yaml`` (relative to the
file) merges it over another file first. Overrides use dotted keys (``solver.base_lr=1e-4``,
``model.loss.ota_k=3``); values are parsed as YAML and checked against the dataclass field types,
and an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffdet.errors import InputError, MissingFileError, cut, shown
from diffdet.modeling.config import ModelConfig

AMP_MODES = ("none", "bf16", "fp16")
SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")


@dataclass
class DataConfig:
    """Datasets and the training transforms (REFERENCE.md §6).

    Attributes:
        train_images: image folder of the training set.
        train_annotations: COCO instances JSON of the training set.
        val_images: image folder of the evaluation set.
        val_annotations: COCO instances JSON of the evaluation set.
        min_size_train: short-edge choices of the training resize (pixels).
        max_size_train: long-edge cap of the training resize (pixels).
        flip_prob: probability of the horizontal flip.
        crop: enable the reference's crop branch (taken with probability 0.5).
        crop_resize: short-edge choices before the crop.
        crop_size: (min, max) crop side in pixels ("absolute_range").
        num_workers: DataLoader worker processes per training process.
        aspect_ratio_grouping: batch landscape and portrait images separately.
        skip_bad: skip unreadable images with a warning instead of stopping.
        max_train_images: use only the first N training images by id (0: all).
        max_val_images: use only the first N evaluation images by id (0: all).
        sampler: "TrainingSampler" (one permutation per epoch) or "RepeatFactorTrainingSampler"
            (LVIS: images of rare categories repeated, REFERENCE.md §10).
        repeat_threshold: category-frequency threshold t of the repeat-factor sampler.
        annotation_format: "coco", "odgt" (CrowdHuman) or "auto" (odgt for a ``.odgt`` file).
        crowdhuman_box: CrowdHuman box kind trained and evaluated: "vbox" (visible body, as the
            paper's Table 1), "fbox" (full body) or "hbox" (head).
    """

    train_images: str = "datasets/coco/train2017"
    train_annotations: str = "datasets/coco/annotations/instances_train2017.json"
    val_images: str = "datasets/coco/val2017"
    val_annotations: str = "datasets/coco/annotations/instances_val2017.json"
    min_size_train: tuple[int, ...] = tuple(range(480, 801, 32))
    max_size_train: int = 1333
    flip_prob: float = 0.5
    crop: bool = False
    crop_resize: tuple[int, ...] = (400, 500, 600)
    crop_size: tuple[int, int] = (384, 600)
    num_workers: int = 4
    aspect_ratio_grouping: bool = True
    skip_bad: bool = False
    max_train_images: int = 0
    max_val_images: int = 0
    sampler: str = "TrainingSampler"
    repeat_threshold: float = 0.001
    annotation_format: str = "auto"
    crowdhuman_box: str = "vbox"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"data sampler must be one of {SAMPLERS}, got {shown(self.sampler)}")
        if not self.repeat_threshold > 0:
            raise InputError(f"data repeat_threshold must be > 0, got {self.repeat_threshold}")


@dataclass
class SolverConfig:
    """Optimiser and schedule (REFERENCE.md §1): AdamW, linear warmup, step decay, clipping.

    Attributes:
        ims_per_batch: images per optimiser step over all processes and accumulation steps.
        base_lr: learning rate after warmup.
        weight_decay: AdamW weight decay (norm weights and biases included, as the reference).
        betas: AdamW betas.
        backbone_multiplier: lr factor of parameters whose name contains "backbone".
        steps: iterations at which the lr is multiplied by ``gamma``.
        gamma: step-decay factor.
        max_iter: optimiser steps of the whole run.
        warmup_factor: lr factor at iteration 0, rising linearly to 1 at ``warmup_iters``.
        warmup_iters: length of the warmup.
        clip: max global L2 norm of all gradients (0 disables clipping).
        amp: "none" (fp32), "bf16" (autocast) or "fp16" (autocast + grad scaler).
        grad_accum: micro-batches accumulated per optimiser step.
        ema: keep an exponential moving average of the weights (used for evaluation and saved).
        ema_decay: EMA decay per step.
    """

    ims_per_batch: int = 16
    base_lr: float = 2.5e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_multiplier: float = 1.0
    steps: tuple[int, ...] = (350000, 420000)
    gamma: float = 0.1
    max_iter: int = 450000
    warmup_factor: float = 0.01
    warmup_iters: int = 1000
    clip: float = 1.0
    amp: str = "none"
    grad_accum: int = 1
    ema: bool = False
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise InputError(f"solver amp must be one of {AMP_MODES}, got {shown(self.amp)}")
        for name in ("ims_per_batch", "max_iter", "grad_accum"):
            if getattr(self, name) < 1:
                raise InputError(f"solver {name} must be >= 1, got {getattr(self, name)}")
        if self.ims_per_batch % self.grad_accum:
            raise InputError(
                f"solver ims_per_batch ({self.ims_per_batch}) must be divisible by "
                f"grad_accum ({self.grad_accum})"
            )


@dataclass
class TrainConfig:
    """Run settings.

    Attributes:
        seed: seed of the weights, data order, augmentation and diffusion noise.
        output_dir: checkpoints, metrics log and the resolved config are written here.
        checkpoint_period: save every N iterations (and at the end).
        eval_period: evaluate every N iterations (0: only at the end).
        log_period: write a metrics line every N iterations.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        deterministic: ask torch for deterministic algorithms (bitwise resume on CPU).
        dist_timeout: seconds the processes of a multi-process run wait for each other, at the
            rendezvous and in every collective, before stopping with an error (longer than the
            slowest checkpoint write or evaluation, which the others wait for).
    """

    seed: int = 40244023
    output_dir: str = "output"
    checkpoint_period: int = 5000
    eval_period: int = 7330
    log_period: int = 20
    device: str = "auto"
    deterministic: bool = False
    dist_timeout: float = 1800.0

    def __post_init__(self) -> None:
        if not self.dist_timeout > 0:
            raise ValueError(f"train dist_timeout must be > 0 seconds, got {self.dist_timeout}")


@dataclass
class TestConfig:
    """Evaluation settings (inference knobs; 0 keeps the model's default). The test resize is
    ``model.min_size_test`` / ``model.max_size_test``.

    Attributes:
        batch_size: images per forward pass.
        num_boxes: proposals at inference (0: model.num_proposals).
        steps: DDIM sampling steps (0: model.sample_steps).
        num_workers: DataLoader workers for evaluation.
    """

    batch_size: int = 1
    num_boxes: int = 0
    steps: int = 0
    num_workers: int = 2


@dataclass
class Config:
    """Everything a training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to the annotated type ``tp``, or ValueError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise InputError("; ".join(errors))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise InputError(f"config key {shown(key)} must be a mapping, got {shown(value)}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise InputError(f"config key {shown(key)} must be a list, got {shown(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise InputError(
                    f"config key {shown(key)} must have {len(args)} items, got {shown(list(value))}"
                )
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        items = [_coerce(v, args[0], key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"config key {shown(key)} must be true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config key {shown(key)} must be an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"config key {shown(key)} must be a number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"config key {shown(key)} must be a string, got {shown(value)}")
        return value
    raise ValueError(f"config key {shown(key)} has unsupported type {tp}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; missing keys keep their defaults.

    Raises:
        ValueError: an unknown key (the message lists the valid ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys under {prefix or 'the root'}: {names}"
        )
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def to_dict(cfg: Any) -> dict:
    """A plain (YAML-safe) nested dict of a config dataclass; tuples become lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _read_yaml(path: Path) -> dict:
    """The mapping a YAML config file holds, merged over its ``_base_``.

    Raises:
        MissingFileError: the file (or its base) does not exist.
        InputError: the file is not UTF-8 YAML holding a mapping (the message names the file and line).
    """
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise InputError(f"config file {path}: not UTF-8 text (byte {err.start + 1})") from err
    except yaml.YAMLError as err:
        raise InputError(f"config file {path}: not valid YAML ({_yaml_problem(err)})") from err
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is not None and not isinstance(base, str):
        raise InputError(f"config file {path}: _base_ must be a file name, got {shown(base)}")
    return _merge(_read_yaml(path.parent / base), data) if base else data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: its problem and line number."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}" if mark is not None else cut(problem)


def _set_override(data: dict, item: str) -> None:
    """Apply one ``dotted.key=value`` to a nested dict, checking the key against :class:`Config`."""
    if "=" not in item:
        raise InputError(f"override must look like key=value, got {shown(item)}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    cls: Any = Config
    node = data
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            where = ".".join(parts[:i]) or "the root"
            raise InputError(f"unknown config key {shown(key)}; valid keys under {where}: {list(fields)}")
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            node[part] = raw if tp is str else _override_value(key, raw)
        elif dataclasses.is_dataclass(tp):
            cls, node = tp, node.setdefault(part, {})
        else:
            raise InputError(
                f"config key {'.'.join(parts[: i + 1])!r} is not a section; cannot set {shown(key)}"
            )


def _override_value(key: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise InputError(
            f"override {key}={shown(raw)[1:-1]}: not a YAML value ({_yaml_problem(err)})"
        ) from err


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself, or the shipped preset of that name (``coco_r50_500boxes``, ``quickstart``...).

    Raises:
        MissingFileError: ``path`` is no file and names no preset (the message lists the presets).
    """
    candidate = Path(path)
    if candidate.is_file() or candidate.suffix in (".yaml", ".yml"):
        return candidate
    from diffdet.configs import preset_path

    return preset_path(str(path))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A :class:`Config` from an optional YAML file or preset name plus ``key=value`` overrides.

    Overrides apply in order.

    Raises:
        MissingFileError (a FileNotFoundError): the YAML file (or its ``_base_``) does not exist and
            names no preset.
        InputError (a ValueError): a file that is not YAML, an unknown key, a malformed override, or a
            value of the wrong type or range; the message names the file or key.
    """
    data = _read_yaml(resolve_config_path(path)) if path is not None else {}
    for item in overrides or []:
        _set_override(data, item)
    try:
        return from_dict(Config, data)
    except ValueError as err:  # InputError, or a value the dataclasses' own checks refuse (ModelConfig's)
        if path is None and isinstance(err, InputError):
            raise
        raise InputError(f"config {path}: {err}" if path is not None else f"config: {err}") from err


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML (loadable again with :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
