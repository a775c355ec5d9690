"""Configuration presets shipped with diffdet (YAML), installed as ``diffdet.configs``."""

from __future__ import annotations

from pathlib import Path

from diffdet.errors import MissingFileError, shown

PRESET_DIR = Path(__file__).resolve().parent


def list_presets() -> list[str]:
    """Names of the shipped presets (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of the preset called ``name``.

    Raises:
        MissingFileError (a FileNotFoundError): no file and no preset has that name; the message lists
            the presets.
    """
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        presets = ", ".join(list_presets()) or "none"
        raise MissingFileError(f"unknown preset {shown(name)} and no such file; presets: {presets}")
    return path
