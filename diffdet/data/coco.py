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
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps

from diffdet.data.lvis import is_lvis, validate_lvis
from diffdet.data.transforms import TrainTransform
from diffdet.errors import BadAnnotationError, BadImageError
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


def _validate(data: object, path: str) -> dict:
    """Check the COCO detection structure; fill a missing ``area`` (w·h) and ``iscrowd`` (0)."""
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
    category_ids = {c.get("id") for c in data["categories"]}
    if None in category_ids:
        raise BadAnnotationError(f"{path}: a category lacks 'id'")
    image_ids = {img["id"] for img in data["images"]}
    for ann in data["annotations"]:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            raise BadAnnotationError(
                f"{path}: annotation {ann['id']} bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
            )
        if bbox[2] < 0 or bbox[3] < 0:
            raise BadAnnotationError(f"{path}: annotation {ann['id']} has a negative width or height {bbox}")
        if ann["category_id"] not in category_ids:
            raise BadAnnotationError(
                f"{path}: annotation {ann['id']} has unknown category_id {ann['category_id']}"
            )
        if ann["image_id"] not in image_ids:
            raise BadAnnotationError(
                f"{path}: annotation {ann['id']} refers to unknown image_id {ann['image_id']}"
            )
        ann.setdefault("area", float(bbox[2] * bbox[3]))
        ann.setdefault("iscrowd", 0)
    return data


def load_coco(annotation_file: str | os.PathLike) -> COCO:
    """Read and validate an instances JSON into a pycocotools ``COCO`` object (quietly).

    Raises:
        FileNotFoundError: the file does not exist.
        BadAnnotationError: the file is not JSON or not COCO detection format (or LVIS format,
            :mod:`diffdet.data.lvis`, when it has LVIS fields); the message names it.
        diffdet.optional.MissingDependencyError: pycocotools is not installed.
    """
    coco_module = pycocotools("coco", "reading COCO annotations")
    path = str(annotation_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadAnnotationError(f"{path}: not valid JSON ({err})") from err
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
        self.coco = load_coco(annotation_file)
        self.is_lvis = is_lvis(self.coco.dataset)  # LVIS format: scored with the LVIS API
        self.category_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.category_ids]
        self.label_of = {cat: i for i, cat in enumerate(self.category_ids)}
        image_ids = sorted(self.coco.imgs)
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
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
