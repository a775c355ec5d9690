"""CrowdHuman datasets: ``.odgt`` annotations (one JSON object per line) and an image folder.

Each line holds ``ID`` (the image is ``{ID}.jpg`` in the folder) and ``gtboxes``, a list of
``{"tag", "fbox", "vbox", "hbox", "extra", "head_attr"}``: full-body, visible-body and head boxes as
[x, y, w, h] pixels. ``tag: "mask"`` boxes (crowds, reflections, statues) and persons with
``extra.ignore`` set are ignore regions; with head boxes, ``head_attr.ignore`` marks one too. Every
other ``tag: "person"`` box is a target of the single class "person" (category id 1, label 0).

Training uses the chosen box kind (``vbox`` by default: the DiffusionDet paper's Table 1 scores
visible boxes) and leaves ignore regions out of the targets, as :class:`~diffdet.data.coco.
CocoDetection` leaves crowd boxes out; evaluation (:mod:`diffdet.evaluation.crowdhuman`) uses them.
Image sizes are read from the image headers (after EXIF rotation), since odgt files hold none.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffdet.data.coco import BadAnnotationError, BadImageError, CocoDetection, Record
from diffdet.data.transforms import TrainTransform
from diffdet.errors import InputError, MissingFileError, cut, shown

BOX_KINDS = ("vbox", "fbox", "hbox")
CATEGORY_ID, CLASS_NAME = 1, "person"
_EXIF_ORIENTATION, _ROTATED = 0x0112, (5, 6, 7, 8)  # orientations that swap width and height


@dataclass
class CrowdHumanRecord(Record):
    """A :class:`~diffdet.data.coco.Record` with the CrowdHuman ID and the ignore regions.

    Attributes:
        name: the odgt ``ID`` (the image file is ``{name}.jpg``).
        ignore_boxes: float64 [m, 4] xyxy pixels of the ignore regions.
    """

    name: str
    ignore_boxes: np.ndarray


@dataclass
class OdgtEntry:
    """One parsed odgt line.

    Attributes:
        name: the image ``ID``.
        boxes: float64 [n, 4] xyxy pixels of the person boxes of the chosen kind.
        ignore_boxes: float64 [m, 4] xyxy pixels of the ignore regions (same box kind).
        line: 1-based line number in the file.
    """

    name: str
    boxes: np.ndarray
    ignore_boxes: np.ndarray
    line: int


def _box(entry: dict, key: str, where: str) -> list[float]:
    box = entry.get(key)
    numbers = isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
    if not numbers:
        raise BadAnnotationError(
            f"{where}: a gtboxes entry's {key!r} must be 4 finite numbers [x, y, w, h], got {shown(box)}"
        )
    if box[2] < 0 or box[3] < 0:
        raise BadAnnotationError(
            f"{where}: a gtboxes entry's {key!r} has a negative width or height {shown(box)}"
        )
    return box


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flags(entry: dict, key: str, where: str) -> dict:
    """``entry[key]`` (``extra``, ``head_attr``): an object, or absent / null (no flags)."""
    flags = entry.get(key)
    if flags is None:
        return {}
    if not isinstance(flags, dict):
        raise BadAnnotationError(f"{where}: a gtboxes entry's {key!r} must be an object, got {shown(flags)}")
    return flags


def _is_ignored(entry: dict, box: str, where: str) -> bool:
    if entry.get("tag") != CLASS_NAME or _flags(entry, "extra", where).get("ignore", 0) != 0:
        return True
    return box == "hbox" and _flags(entry, "head_attr", where).get("ignore", 0) != 0


def _xyxy(boxes: list[list[float]]) -> np.ndarray:
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, 2:] += out[:, :2]
    return out


def _image_name(record: object, where: str) -> str:
    """The record's ``ID``: a non-empty string usable as a file name (``{ID}.jpg`` in the image folder)."""
    name = record.get("ID") if isinstance(record, dict) else None
    if not isinstance(name, str):
        raise BadAnnotationError(f"{where}: expected a JSON object with a string 'ID', got {shown(record)}")
    if not name or any(c in name for c in ("\0", "/", "\\")):
        raise BadAnnotationError(
            f"{where}: ID {shown(name)} is not a file name (empty, or has NUL or a slash)"
        )
    return name


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(number, text)`` of each non-blank line, numbered from 1; each line is decoded on its own, so
    that a byte that is not UTF-8 is reported with its line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BadAnnotationError(
                    f"{path}:{number}: not UTF-8 text (byte {err.start + 1} of the line)"
                ) from err
            if text.strip():
                yield number, text


def read_odgt(path: str | os.PathLike, box: str = "vbox") -> list[OdgtEntry]:
    """Parse an odgt file (blank lines are skipped).

    Args:
        path (str | PathLike): the ``.odgt`` file.
        box (str): the box kind, "vbox" (visible body), "fbox" (full body) or "hbox" (head).

    Returns:
        list[OdgtEntry]: the images in file order.

    Raises:
        InputError: ``box`` is not one of :data:`BOX_KINDS`.
        MissingFileError (a FileNotFoundError): the file does not exist.
        BadAnnotationError: the file holds no record, or a line is not UTF-8 JSON or not an odgt record
            (IDs that repeat or are no file name; boxes of the chosen kind that are not 4 finite numbers
            with w, h >= 0); the message names the file and line.
    """
    if box not in BOX_KINDS:
        raise InputError(f"box must be one of {BOX_KINDS}, got {shown(box)}")
    path = str(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"annotation file not found: {path}")
    entries, seen = [], {}
    for number, text in _lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise BadAnnotationError(f"{where}: not valid JSON ({cut(str(err), 120)})") from err
        name = _image_name(record, where)
        if not isinstance(record.get("gtboxes", []), list):
            raise BadAnnotationError(f"{where}: 'gtboxes' must be a list, got {shown(record['gtboxes'])}")
        if name in seen:
            raise BadAnnotationError(f"{where}: ID {shown(name)} already on line {seen[name]}")
        seen[name] = number
        persons, ignored = [], []
        for entry in record.get("gtboxes", []):
            if not isinstance(entry, dict):
                raise BadAnnotationError(f"{where}: a gtboxes entry is not an object: {shown(entry)}")
            (ignored if _is_ignored(entry, box, where) else persons).append(_box(entry, box, where))
        entries.append(OdgtEntry(name, _xyxy(persons), _xyxy(ignored), seen[name]))
    if not entries:
        raise BadAnnotationError(f"{path}: the file holds no record, so there is nothing to train or score")
    return entries


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file after EXIF rotation, from its header only.

    Raises:
        BadImageError: the file is missing or not an image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in _ROTATED:
                width, height = height, width
    except FileNotFoundError as err:
        raise BadImageError(f"image file not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise BadImageError(f"cannot read image {path}: {err}") from err
    return height, width


class CrowdHumanDetection(CocoDetection):
    """A CrowdHuman dataset with the interface of :class:`~diffdet.data.coco.CocoDetection`.

    Items, ``(index, seed)`` keys, ``aspect_groups``, ``category_ids`` (``[1]``) and ``class_names``
    (``["person"]``) are those of CocoDetection; image ids are the line order 0..N−1 and
    ``records[i].name`` is the odgt ID. There is no ``coco`` attribute: evaluation uses
    :mod:`diffdet.evaluation.crowdhuman`.

    Args:
        image_dir (str | PathLike): folder holding ``{ID}.jpg``.
        annotation_file (str | PathLike): the ``.odgt`` file.
        transform (TrainTransform | None): training augmentation, or None (evaluation).
        skip_bad (bool): leave out images that are missing or unreadable, with a warning, instead of
            raising (and skip images that fail to decode later, as CocoDetection does).
        max_images (int): keep only the first ``max_images`` lines (0 keeps all).
        box (str): the target box kind, "vbox" (default), "fbox" or "hbox".

    Raises:
        InputError: ``box`` or ``max_images`` is invalid.
        BadAnnotationError: the odgt file is malformed (file and line named).
        BadImageError: an image is missing or unreadable and ``skip_bad`` is False.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transform: TrainTransform | None = None,
        skip_bad: bool = False,
        max_images: int = 0,
        box: str = "vbox",
    ) -> None:
        if max_images < 0:
            raise InputError(f"max_images must be >= 0, got {max_images}")
        self.image_dir, self.box = Path(image_dir), box
        self.annotation_file = str(annotation_file)
        entries = read_odgt(annotation_file, box)
        if max_images:
            entries = entries[:max_images]
        self.category_ids, self.class_names = [CATEGORY_ID], [CLASS_NAME]
        self.label_of = {CATEGORY_ID: 0}
        self.is_lvis = False  # CocoDetection's flag, read by training and evaluation
        self.records: list[CrowdHumanRecord] = []
        for entry in entries:
            path = str(self.image_dir / f"{entry.name}.jpg")
            try:
                height, width = image_size(path)
            except BadImageError as err:
                message = f"{err} (ID {entry.name!r} on {self.annotation_file}:{entry.line})"
                if not skip_bad:
                    raise BadImageError(message) from err
                warnings.warn(f"skipping bad image (data.skip_bad=true): {message}", stacklevel=2)
                continue
            labels = np.zeros(len(entry.boxes), dtype=np.int64)
            self.records.append(
                CrowdHumanRecord(
                    len(self.records),
                    path,
                    height,
                    width,
                    entry.boxes,
                    labels,
                    entry.name,
                    entry.ignore_boxes,
                )
            )
        if not self.records:
            raise BadImageError(f"no usable image of {self.annotation_file} in {self.image_dir}")
        self.transform = transform
        self.skip_bad = skip_bad


def is_odgt(annotation_file: str | os.PathLike) -> bool:
    """Whether an annotation file is CrowdHuman odgt, by its suffix."""
    return Path(annotation_file).suffix.lower() == ".odgt"


ANNOTATION_FORMATS = ("auto", "coco", "odgt")


def detection_dataset(
    image_dir: str | os.PathLike,
    annotation_file: str | os.PathLike,
    transform: TrainTransform | None = None,
    skip_bad: bool = False,
    max_images: int = 0,
    annotation_format: str = "auto",
    crowdhuman_box: str = "vbox",
) -> CocoDetection:
    """A COCO or CrowdHuman dataset, by ``annotation_format`` ("auto": odgt for a ``.odgt`` file).

    Args: those of :class:`CrowdHumanDetection` (``crowdhuman_box`` is its ``box``; COCO ignores it).

    Raises:
        InputError: ``annotation_format`` or ``crowdhuman_box`` is not a known value.
    """
    if annotation_format not in ANNOTATION_FORMATS:
        raise InputError(
            f"data.annotation_format must be one of {ANNOTATION_FORMATS}, got {shown(annotation_format)}"
        )
    if crowdhuman_box not in BOX_KINDS:
        raise InputError(f"data.crowdhuman_box must be one of {BOX_KINDS}, got {shown(crowdhuman_box)}")
    if annotation_format == "odgt" or (annotation_format == "auto" and is_odgt(annotation_file)):
        return CrowdHumanDetection(
            image_dir, annotation_file, transform, skip_bad, max_images, crowdhuman_box
        )
    return CocoDetection(image_dir, annotation_file, transform, skip_bad, max_images)
