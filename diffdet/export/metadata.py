"""The ``diffdet`` metadata of an exported file: what the graph was built for, as one JSON object.

ONNX files carry it under the ``metadata_props`` key ``diffdet``; ``.pt2`` files as the extra file
``diffdet.json`` of ``torch.export.save``. :func:`read_metadata` reads either without running or
unpickling anything from the file.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

from diffdet.errors import InputError
from diffdet.optional import require

METADATA_KEY = "diffdet"
"""ONNX ``metadata_props`` key, and the stem of the ``.pt2`` extra file."""
PT2_EXTRA_FILE = "diffdet.json"
FORMAT_VERSION = 1
"""Bumped when the graph's inputs, outputs or metadata change meaning."""
FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
"""File suffix -> format."""

REQUIRED_KEYS = (
    "format_version", "format", "height", "width", "batch", "num_boxes", "steps", "dtype",
    "max_detections", "renewal_threshold", "nms_iou", "ensemble", "score_threshold", "class_names",
    "category_ids",
)  # fmt: skip


def format_of(path: str | Path, default: str | None = None) -> str:
    """``"onnx"`` or ``"pt2"`` from the file suffix, else ``default``.

    Raises:
        InputError: the suffix is neither and no default is given.
    """
    fmt = FORMATS.get(Path(path).suffix.lower(), default)
    if fmt is None:
        raise InputError(f"{path}: cannot tell the format from the suffix (use .onnx or .pt2, or --format)")
    return fmt


def read_metadata(path: str | Path) -> dict:
    """The ``diffdet`` metadata of an exported ``.onnx`` or ``.pt2`` file.

    The format comes from the suffix; any other suffix is read as ``.pt2`` when the file is a zip
    archive and as ONNX otherwise. ONNX files are parsed without their external data.

    Args:
        path: the exported file.

    Returns:
        The metadata dict (keys of :data:`REQUIRED_KEYS` at least).

    Raises:
        InputError: the file is missing, unreadable, truncated, not an export of diffdet, or its
            metadata is not a JSON object with the required keys (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower()) or ("pt2" if zipfile.is_zipfile(path) else "onnx")
    text = _read_pt2(path) if fmt == "pt2" else _read_onnx(path)
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise InputError(f"{path}: the diffdet metadata is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise InputError(f"{path}: the diffdet metadata is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise InputError(f"{path}: the diffdet metadata lacks {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise InputError(
            f"{path}: diffdet export format version {meta['format_version']} is not the version this "
            f"diffdet reads ({FORMAT_VERSION}); export the model again"
        )
    return meta


def _read_onnx(path: Path) -> str:
    onnx = require("onnx", "onnx", "reading an ONNX file")
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from err
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise InputError(f"{path}: an ONNX file without diffdet metadata (not exported by diffdet export)")
    return props[METADATA_KEY]


def _read_pt2(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{PT2_EXTRA_FILE}")]
            if not names:
                raise InputError(
                    f"{path}: a .pt2 file without diffdet metadata (not exported by diffdet export)"
                )
            return archive.read(names[0]).decode("utf-8")
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable .pt2 archive ({type(err).__name__}: {err})") from err
