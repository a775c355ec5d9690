"""Configuration presets shipped with diffdet (YAML), installed as ``diffdet.configs``."""

from __future__ import annotations

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent


def list_presets() -> list[str]:
    """Names of the shipped presets (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of the preset called ``name``.

    Raises:
        ValueError: no preset has that name; the message lists the ones that exist.
    """
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(list_presets()) or 'none'}")
    return path
