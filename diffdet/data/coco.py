"""COCO-format detection datasets read through pycocotools (an image folder + an instances JSON).

Category ids are mapped to contiguous labels 0..K−1 in increasing id order (and back for results
files). Crowd boxes (iscrowd=1) are left out of the training targets but stay in the COCO object
used for evaluation. Images without annotations are kept. Images are decoded with Pillow, rotated by
their EXIF orientation and converted to RGB (grayscale, palette, RGBA and CMYK alike).

A missing or corrupt image, or one whose decoded size differs from the JSON, raises
:class:`BadImageError` naming the file; with ``skip_bad=True`` it is skipped with a warning and the
next image in the dataset is returned instead, so batches keep their size and are never silently wrong.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps

from diffdet.data.lvis import is_lvis, validate_lvis
from diffdet.data.transforms import TrainTransform, check_resizable
from diffdet.errors import BadAnnotationError, BadImageError, InputError, MissingFileError, cut, shown
from diffdet.optional import pycocotools

if TYPE_CHECKING:
    from pycocotools.coco import COCO

REQUIRED_KEYS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "bbox", "category_id"),
}


@dataclass
class Record:
    """One image of the dataset.

    Attributes:
        image_id: COCO image id.
        file_name: absolute path of the image file.
        height: image height in pixels (from the JSON).
        width: image width in pixels (from the JSON).
        boxes: float64 [n, 4] xyxy pixels of the non-crowd annotations.
        labels: int64 [n] contiguous class ids of those annotations.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_ids(entries: list, key: str, path: str) -> set[int]:
    """The ``id`` set of ``images`` / ``annotations`` / ``categories``: integers, each once (pycocotools
    indexes by id, so a repeated id would silently replace an entry)."""
    seen: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            got = entry.get("id") if isinstance(entry, dict) else entry
            raise BadAnnotationError(f"{path}: {key}[{i}] needs an integer 'id', got {shown(got)}")
        if entry["id"] in seen:
            raise BadAnnotationError(
                f"{path}: {key}[{i}] repeats the id {entry['id']} of {key}[{seen[entry['id']]}]"
            )
        seen[entry["id"]] = i
    return set(seen)


def _check_image(img: dict, i: int, path: str) -> None:
    where = f"{path}: images[{i}] (id {img['id']})"
    for side in ("height", "width"):
        if not _is_int(img[side]) or img[side] < 1:
            raise BadAnnotationError(f"{where} {side} must be a positive integer, got {shown(img[side])}")
    name = img["file_name"]
    if not isinstance(name, str) or not name or "\0" in name:
        raise BadAnnotationError(f"{where} file_name must be a file name, got {shown(name)}")


def _check_annotation(ann: dict, path: str, image_ids: set[int], category_ids: set[int]) -> None:
    where = f"{path}: annotation {ann['id']}"
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise BadAnnotationError(f"{where} bbox must be 4 finite numbers [x, y, w, h], got {shown(bbox)}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise BadAnnotationError(f"{where} has a negative width or height {shown(bbox)}")
    if not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
        raise BadAnnotationError(f"{where} has unknown category_id {shown(ann['category_id'])}")
    if not _is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
        raise BadAnnotationError(f"{where} refers to unknown image_id {shown(ann['image_id'])}")
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        raise BadAnnotationError(f"{where} area must be a finite number >= 0, got {shown(ann['area'])}")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise BadAnnotationError(f"{where} iscrowd must be 0 or 1, got {shown(ann['iscrowd'])}")


def _validate(data: object, path: str) -> dict:
    """Check the COCO detection structure; fill a missing ``area`` (w·h) and ``iscrowd`` (0).

    Refused, with the file and the entry named: missing keys, ids that are not integers or repeat,
    image sizes that are not positive integers, boxes that are not 4 finite numbers with w, h >= 0
    (pycocotools would drop a NaN box silently and change the AP), references to unknown images or
    categories, and a file without images.
    """
    if not isinstance(data, dict):
        raise BadAnnotationError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BadAnnotationError(f"{path}: missing or non-list key {key!r}")
    for key, fields in REQUIRED_KEYS.items():
        for i, entry in enumerate(data[key]):
            missing = [f for f in fields if f not in entry] if isinstance(entry, dict) else list(fields)
            if missing:
                raise BadAnnotationError(f"{path}: {key}[{i}] lacks {missing}")
    if not data["images"]:
        raise BadAnnotationError(f"{path}: the file holds no image, so there is nothing to train or score")
    category_ids = _check_ids(data["categories"], "categories", path)
    image_ids = _check_ids(data["images"], "images", path)
    _check_ids(data["annotations"], "annotations", path)
    for i, img in enumerate(data["images"]):
        _check_image(img, i, path)
    for ann in data["annotations"]:
        _check_annotation(ann, path, image_ids, category_ids)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    return data


def load_coco(annotation_file: str | os.PathLike) -> COCO:
    """Read and validate an instances JSON into a pycocotools ``COCO`` object (quietly).

    Raises:
        MissingFileError (a FileNotFoundError): the file does not exist.
        BadAnnotationError: the file is not JSON or not COCO detection format (or LVIS format,
            :mod:`diffdet.data.lvis`, when it has LVIS fields); the message names it.
        diffdet.optional.MissingDependencyError: pycocotools is not installed.
    """
    coco_module = pycocotools("coco", "reading COCO annotations")
    path = str(annotation_file)
    if not os.path.isfile(path):
        raise MissingFileError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise BadAnnotationError(f"{path}: not valid JSON ({cut(str(err), 120)})") from err
    except OSError as err:
        raise BadAnnotationError(f"{path}: cannot be read ({err.strerror})") from err
    if is_lvis(data):
        data = validate_lvis(data, path)
    coco = coco_module.COCO()
    coco.dataset = _validate(data, path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_image(path: str, expected_hw: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image to RGB, honouring its EXIF orientation.

    Args:
        path (str): image file.
        expected_hw (tuple[int, int] | None): (height, width) the image must have after EXIF rotation.

    Returns:
        PIL.Image.Image: an RGB image.

    Raises:
        BadImageError: the file is missing, cannot be decoded, or has an unexpected size.
    """
    try:
        with Image.open(path) as raw:
            image = ImageOps.exif_transpose(raw)
            image = image.convert("RGB")  # L, P, RGBA, CMYK, I;16 → RGB; forces a full decode
    except FileNotFoundError as err:
        raise BadImageError(f"image file not found: {path}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(f"cannot decode image {path}: {err}") from err
    if expected_hw is not None and (image.height, image.width) != tuple(expected_hw):
        raise BadImageError(
            f"image {path} is {image.height}x{image.width} (HxW) but its annotation says "
            f"{expected_hw[0]}x{expected_hw[1]}"
        )
    return image


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset.

    Args:
        image_dir (str | PathLike): folder the JSON's ``file_name`` entries are relative to.
        annotation_file (str | PathLike): instances JSON, COCO or LVIS format
            (:mod:`diffdet.data.lvis`; ``is_lvis`` then says so).
        transform (TrainTransform | None): training augmentation (see
            :class:`~diffdet.data.transforms.TrainTransform`), or None for the original images
            (evaluation: the detector applies its own test resize).
        skip_bad (bool): skip unusable images with a warning instead of raising.
        max_images (int): keep only the first ``max_images`` images in id order (0 keeps all).

    Items are fetched with an int index or an ``(index, seed)`` pair; the seed drives the random
    transform. Each item is a dict: ``image`` uint8 [3, H, W] RGB; ``boxes`` float32 [n, 4] xyxy
    pixels of that image; ``labels`` int64 [n]; ``image_id``; ``orig_size`` (H, W) of the file.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transform: TrainTransform | None = None,
        skip_bad: bool = False,
        max_images: int = 0,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = str(annotation_file)
        self.coco = load_coco(annotation_file)
        self.is_lvis = is_lvis(self.coco.dataset)  # LVIS format: scored with the LVIS API
        self.category_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.category_ids]
        self.label_of = {cat: i for i, cat in enumerate(self.category_ids)}
        image_ids = sorted(self.coco.imgs)
        if max_images < 0:
            raise InputError(f"max_images must be >= 0, got {max_images}")
        if max_images:
            image_ids = image_ids[:max_images]
        self.records = [self._record(i) for i in image_ids]
        self.transform = transform
        self.skip_bad = skip_bad

    def _record(self, image_id: int) -> Record:
        info = self.coco.imgs[image_id]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh → xyxy
        labels = np.array([self.label_of[a["category_id"]] for a in anns], dtype=np.int64)
        path = str(self.image_dir / info["file_name"])
        return Record(image_id, path, int(info["height"]), int(info["width"]), boxes, labels)

    def __len__(self) -> int:
        return len(self.records)

    def image_category_ids(self) -> list[list[int]]:
        """Per image (dataset order), the category ids of all its annotations, crowd ones included
        (what detectron2's dataset dicts hold; repeat factors and class counts are computed from it)."""
        return [[a["category_id"] for a in self.coco.imgToAnns.get(r.image_id, [])] for r in self.records]

    def check_resizable(self, short_edge: int, max_size: int) -> None:
        """Refuse, before any work, an image the resize would shrink to 0 pixels on a side.

        Args:
            short_edge (int): the smallest short-edge size of the resize (pixels).
            max_size (int): its long-side cap (pixels).

        Raises:
            BadImageError: names the first such image, its id and the annotation file.
        """
        for r in self.records:
            where = f"{r.file_name} (image id {r.image_id} of {self.annotation_file})"
            check_resizable(r.height, r.width, short_edge, max_size, where)

    def aspect_groups(self) -> np.ndarray:
        """int64 [N]: 0 for landscape (w ≥ h), 1 for portrait images, from the JSON sizes."""
        return np.array([0 if r.width >= r.height else 1 for r in self.records], dtype=np.int64)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                image = read_image(record.file_name, (record.height, record.width))
            except BadImageError as err:
                if not self.skip_bad:
                    raise
                warnings.warn(f"skipping bad image (data.skip_bad=true): {err}", stacklevel=2)
                continue
            return self._item(record, image, seed)
        raise BadImageError(f"every image of the dataset under {self.image_dir} is unusable")

    def _item(self, record: Record, image: Image.Image, seed: int | tuple[int, ...]) -> dict:
        boxes, labels = record.boxes, record.labels
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels, np.random.default_rng(seed))
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        return {
            "image": tensor,
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
        }
