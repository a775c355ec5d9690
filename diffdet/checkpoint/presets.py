"""Named checkpoints (presets) and where their files live. Nothing is ever downloaded.

A preset resolves to a file in ``$DIFFDET_WEIGHTS_DIR`` (default ``~/.cache/diffdet``) under the
reference's release file name; if the file is absent, the error says which file to fetch from where
and where to put it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RELEASE_URL = "https://github.com/ShoufaChen/DiffusionDet/releases/download/v0.1"
"""Where the reference's checkpoints are published (REFERENCE.md §7)."""


@dataclass(frozen=True)
class Preset:
    """A named checkpoint.

    Attributes:
        filename: file name in the weights directory (the release asset's name).
        source: URL to download the file from by hand, or a sentence saying how to produce it.
        model_overrides: ModelConfig fields the checkpoint's keys cannot tell (e.g. num_proposals).
    """

    filename: str
    source: str
    model_overrides: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "coco_r50_500boxes": Preset(
        "diffdet_coco_res50.pth", f"{RELEASE_URL}/diffdet_coco_res50.pth", {"num_proposals": 500}
    ),
    "coco_r50_300boxes": Preset(
        "diffdet_coco_res50_300boxes.pth",
        f"{RELEASE_URL}/diffdet_coco_res50_300boxes.pth",
        {"num_proposals": 300},
    ),
    "coco_r101_500boxes": Preset(
        "diffdet_coco_res101.pth", f"{RELEASE_URL}/diffdet_coco_res101.pth", {"num_proposals": 500}
    ),
    "coco_swinb": Preset(
        "diffdet_coco_swinbase.pth", f"{RELEASE_URL}/diffdet_coco_swinbase.pth", {"num_proposals": 500}
    ),
    # The LVIS checkpoints tell their 1203 classes and federated loss (criterion.fed_loss_cls_weights)
    # by their keys; the model gets LVIS v1's class names and category ids.
    "lvis_r50": Preset(
        "diffdet_lvis_res50.pth", f"{RELEASE_URL}/diffdet_lvis_res50.pth", {"num_proposals": 500}
    ),
    "lvis_r101": Preset(
        "diffdet_lvis_res101.pth", f"{RELEASE_URL}/diffdet_lvis_res101.pth", {"num_proposals": 500}
    ),
    "lvis_swinb": Preset(
        "diffdet_lvis_swinbase.pth", f"{RELEASE_URL}/diffdet_lvis_swinbase.pth", {"num_proposals": 500}
    ),
    "quickstart": Preset(
        "diffdet_quickstart.pth",
        "`diffdet quickstart`, which trains the small synthetic-shapes detector on the CPU",
    ),
}
"""Presets mirroring the reference's seven released checkpoints (configs diffdet.coco.res50,
res50.300boxes, res101, swinbase and diffdet.lvis.res50, res101, swinbase), and the small detector the
quickstart trains (a diffdet checkpoint that carries its own config)."""


def weights_dir() -> Path:
    """``$DIFFDET_WEIGHTS_DIR``, or ``~/.cache/diffdet`` when unset."""
    return Path(os.environ.get("DIFFDET_WEIGHTS_DIR") or Path.home() / ".cache" / "diffdet").expanduser()


def resolve(path_or_preset: str | os.PathLike) -> tuple[Path, Preset | None]:
    """The checkpoint file a path or preset name refers to.

    An existing file wins over a preset of the same name.

    Args:
        path_or_preset: a checkpoint path, or a key of :data:`PRESETS`.

    Returns:
        (path of an existing file, the Preset or None for a plain path).

    Raises:
        FileNotFoundError: the preset's file is not in :func:`weights_dir` (the message says which
            file to download from where and where to put it), or the path does not exist.
    """
    path = Path(path_or_preset).expanduser()
    if path.is_file():
        return path, None
    name = str(path_or_preset)
    if name in PRESETS:
        preset = PRESETS[name]
        target = weights_dir() / preset.filename
        if target.is_file():
            return target, preset
        how = (
            f"fetch it by hand from {preset.source}"
            if preset.source.startswith("https://")
            else (f"it is written by {preset.source}")
        )
        raise FileNotFoundError(
            f"preset {name!r} needs {preset.filename} in {target.parent} (set DIFFDET_WEIGHTS_DIR to use "
            f"another directory); diffdet never downloads: {how}, as {target}"
        )
    raise FileNotFoundError(
        f"{name} is neither an existing checkpoint file nor a preset (presets: {sorted(PRESETS)})"
    )
