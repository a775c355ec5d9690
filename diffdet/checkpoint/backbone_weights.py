"""ImageNet (or other) initial weights for the ResNet or Swin trunk: ``--weights`` of the trainer.

Accepted files for a ResNet:
- detectron2's torchvision-converted ``.pkl`` (``detectron2://ImageNetPretrained/torchvision/R-50.pkl``,
  the reference's initialisation): ``{"model": {name: ndarray}, "__author__": ...}`` with detectron2
  names (``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean``), read by a restricted unpickler;
- a torchvision ResNet state_dict ``.pth`` (``conv1.weight``, ``layer1.0.bn1.weight``...), renamed;
- any torch checkpoint whose (``model``) state_dict holds the trunk under ``backbone.bottom_up.``
  (a reference or diffdet checkpoint) or under detectron2 names.

Caffe2/MSRA-named ``.pkl`` files (``res2_0_branch2a_w``) are refused: they expect BGR input and the
stride in the 1×1 conv, unlike the reference's RGB, torchvision-style model.

Accepted files for a Swin (REFERENCE.md §9): the Swin repository's classification ``.pth``
(``{"model": state_dict}``, e.g. ``swin_base_patch4_window7_224_22k.pth``) and detectron2's ``.pkl`` made
from it (``{"model": <the same dict of torch tensors>, "__author__": "third_party",
"matching_heuristics": True}``, the reference's ``swin_base_patch4_window7_224_22k.pkl``). The keys map
onto the trunk as detectron2's matching heuristics map them for the reference (``K`` becomes
``backbone.bottom_up.K``): every trunk tensor is filled except the per-output norms ``norm0..norm3``,
which stay at their initialisation; the classifier's ``attn_mask`` buffers, final ``norm`` and ``head``
are ignored. A file for another Swin size (other depths, widths or window) is refused with the keys
that do not fit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffdet.checkpoint.safe_io import load_pickle, torch_load
from diffdet.errors import InputError, MissingFileError
from diffdet.modeling.backbone import FPN, ResNet, SwinTransformer

_PREFIXES = ("module.", "backbone.bottom_up.")
_SWIN_TRUNK = ("patch_embed.", "layers.")  # Swin keys that must match the trunk one for one


@dataclass
class BackboneWeightsReport:
    """What :func:`load_backbone_weights` did, by trunk (ResNet or Swin) state_dict key.

    Attributes:
        loaded: keys copied from the file.
        missing: trunk keys the file did not provide (left as they were: Swin's norm0..norm3).
        ignored: file keys with no trunk counterpart (classifier ``fc``/``head``, ``num_batches_tracked``,
            Swin's ``attn_mask`` and final ``norm``...).
    """

    loaded: list[str]
    missing: list[str]
    ignored: list[str]

    def __str__(self) -> str:
        return (
            f"loaded {len(self.loaded)} backbone tensors; {len(self.missing)} missing {self.missing[:10]}; "
            f"{len(self.ignored)} ignored {self.ignored[:10]}"
        )


def torchvision_to_detectron2_name(name: str) -> str:
    """Rename a torchvision ResNet key to detectron2's (as detectron2's convert-torchvision-to-d2.py).

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layer{k}`` -> ``res{k+1}``;
    ``bn{i}`` -> ``conv{i}.norm``; ``downsample.0`` -> ``shortcut``; ``downsample.1`` -> ``shortcut.norm``.
    """
    if not name.startswith("layer"):
        name = "stem." + name
    name = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", name)
    name = re.sub(r"bn(\d)", r"conv\1.norm", name)
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def read_backbone_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a backbone weights file into a dict with the trunk's names.

    Args:
        path: ``.pkl`` (detectron2 pickle of numpy arrays or torch tensors) or a torch file (see the
            module docstring).

    Returns:
        dict name -> CPU tensor, names as in :class:`~diffdet.modeling.backbone.ResNet`'s state_dict
        (torchvision names are renamed) or as in the Swin file (unchanged).

    Raises:
        MissingFileError (a FileNotFoundError): ``path`` does not exist.
        BadWeightsError (a pickle.UnpicklingError): the file is not a weights file (empty, truncated,
            text) or holds anything but tensors, numpy arrays and containers.
        InputError (a ValueError): the file has Caffe2/MSRA names or no recognisable weights.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"backbone weights {path} do not exist")
    obj: Any = load_pickle(path) if path.suffix == ".pkl" else torch_load(path)
    if isinstance(obj, Mapping) and "blobs" in obj:
        obj = obj["blobs"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: expected a dict of weights, got {type(obj).__name__}")
    if "conv1_w" in obj or any(re.match(r"res\d_\d+_branch", str(k)) for k in obj):
        raise InputError(
            f"{path} has Caffe2/MSRA names (BGR input, stride in the 1x1 conv); diffdet follows the "
            "reference and uses the torchvision-converted weights: detectron2://ImageNetPretrained/torchvision/R-50.pkl"
        )
    weights = {}
    for key, value in obj.items():
        name = str(key)
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        if re.match(r"(conv1|bn1|fc)\.|layer\d", name):  # torchvision names (Swin has layers.N)
            name = torchvision_to_detectron2_name(name)
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value))
        if isinstance(value, torch.Tensor):
            weights[name] = value
    if not weights:
        raise InputError(f"{path}: no tensors or arrays found")
    return weights


def _find_trunk(target: nn.Module) -> ResNet | SwinTransformer:
    if isinstance(target, (ResNet, SwinTransformer)):
        return target
    if isinstance(target, FPN):
        return _find_trunk(target.bottom_up)
    backbone = getattr(target, "backbone", None)
    if isinstance(backbone, nn.Module):
        return _find_trunk(backbone)
    raise ValueError(
        "target must be a ResNet, a SwinTransformer, an FPN or a model with a .backbone, "
        f"got {type(target).__name__}"
    )


def _check_swin_fit(path: str | os.PathLike, weights: dict, own: dict) -> None:
    """A Swin file must hold exactly the trunk's patch_embed.* and layers.* keys (attn_mask aside)."""
    trunk = [k for k in weights if k.startswith(_SWIN_TRUNK) and not k.endswith(".attn_mask")]
    unexpected = [k for k in trunk if k not in own]
    missing = [k for k in own if k.startswith(_SWIN_TRUNK) and k not in weights]
    if unexpected or missing:
        raise InputError(
            f"{path} does not fit this Swin trunk (another size or not Swin weights): "
            f"{len(missing)} trunk keys missing {missing[:10]}, "
            f"{len(unexpected)} unexpected {unexpected[:10]}"
        )


@torch.no_grad()
def load_backbone_weights(target: nn.Module, path: str | os.PathLike) -> BackboneWeightsReport:
    """Copy a weights file into the ResNet or Swin trunk of ``target``, matching by name.

    Keys the file lacks stay as initialised; file keys the trunk lacks are ignored; both are reported.
    Shapes must agree for every key the two share. A Swin file must also cover every patch_embed and
    layers key of the trunk, and no other (see the module docstring).

    Args:
        target: a ResNet or SwinTransformer, an FPN, or a detector whose ``backbone`` is an FPN.
        path: weights file, see :func:`read_backbone_weights`.

    Returns:
        The :class:`BackboneWeightsReport`.

    Raises:
        InputError (a ValueError): a shared key has a different shape, no key matches (wrong file or
            model), or a Swin file is for another size; the message names the keys.
        MissingFileError, BadWeightsError: see :func:`read_backbone_weights`.
        ValueError: ``target`` has no ResNet or Swin trunk.
    """
    trunk = _find_trunk(target)
    weights = read_backbone_weights(path)
    own = trunk.state_dict()
    shared = [k for k in weights if k in own]
    wrong = [
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in shared
        if weights[k].shape != own[k].shape
    ]
    if wrong:
        raise InputError(f"{path}: {len(wrong)} shape mismatches with the backbone: {wrong[:10]}")
    if not shared:
        raise InputError(
            f"{path}: no key matches the backbone "
            f"(file keys {sorted(weights)[:5]}, model keys {sorted(own)[:5]})"
        )
    if isinstance(trunk, SwinTransformer):
        _check_swin_fit(path, weights, own)
    for k in shared:
        own[k].copy_(weights[k])
    return BackboneWeightsReport(
        loaded=shared,
        missing=[k for k in own if k not in weights],
        ignored=[k for k in weights if k not in own],
    )
