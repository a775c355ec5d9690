"""LVIS-format annotation files (LVIS v1: ``lvis_v1_train.json``, ``lvis_v1_val.json``).

An LVIS file is COCO detection format plus federated-annotation fields, and is read by the same
:class:`~diffdet.data.coco.CocoDetection` once :func:`validate_lvis` has checked them:

- every image has ``neg_category_ids`` (categories verified absent) and
  ``not_exhaustive_category_ids`` (categories whose instances are not all annotated), and either a
  ``file_name`` or a ``coco_url``. LVIS v1 images have only the URL; as detectron2 does, the file is
  its last two URL parts under the image folder, which is therefore the COCO root holding
  ``train2017/`` and ``val2017/`` (``http://images.cocodataset.org/val2017/000000000139.jpg`` →
  ``IMAGE_DIR/val2017/000000000139.jpg``).
- every category has a ``frequency`` (``r``, ``c`` or ``f``: the groups of APr/APc/APf) and may have
  an ``image_count`` (training images with the category; the federated-loss weights use it).
- there are no crowd annotations (``iscrowd`` is filled with 0 like any missing COCO field).

Category ids are mapped to contiguous labels in increasing id order, so LVIS v1's ids 1..1203 become
labels 0..1202 (id − 1), as in the published models.
"""

from __future__ import annotations

from diffdet.errors import BadAnnotationError

LVIS_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
FREQUENCIES = ("r", "c", "f")


def is_lvis(data: object) -> bool:
    """Whether a parsed annotation file is LVIS format (an image with a federated-annotation field,
    or a category with a ``frequency``), and so must satisfy :func:`validate_lvis`."""
    if not isinstance(data, dict):
        return False
    images, categories = data.get("images"), data.get("categories")
    in_images = isinstance(images, list) and any(
        isinstance(img, dict) and any(k in img for k in LVIS_IMAGE_KEYS) for img in images
    )
    in_categories = isinstance(categories, list) and any(
        isinstance(cat, dict) and "frequency" in cat for cat in categories
    )
    return in_images or in_categories


def validate_lvis(data: dict, path: str) -> dict:
    """Check the LVIS fields of a parsed file and give every image a ``file_name`` (from ``coco_url``).

    The COCO structure (ids, boxes, references) is checked afterwards by the COCO loader.

    Args:
        data (dict): the parsed JSON; modified in place.
        path (str): the file's path, for the messages.

    Returns:
        dict: ``data``.

    Raises:
        BadAnnotationError: an LVIS field is missing or malformed; the one-line message names the file and
            the entry.
    """
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise BadAnnotationError(f"{path}: missing or non-list key {key!r}")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise BadAnnotationError(f"{path}: images[{i}] is not an object")
        for key in LVIS_IMAGE_KEYS:
            if not isinstance(img.get(key), list):
                raise BadAnnotationError(
                    f"{path}: images[{i}] (id {img.get('id')}) lacks the list {key!r} that LVIS images "
                    f"need ({', '.join(LVIS_IMAGE_KEYS)})"
                )
        if "file_name" not in img:
            url = img.get("coco_url")
            if not isinstance(url, str) or url.count("/") < 1:
                raise BadAnnotationError(
                    f"{path}: images[{i}] (id {img.get('id')}) has neither file_name nor coco_url"
                )
            img["file_name"] = "/".join(url.split("/")[-2:])  # e.g. "val2017/000000000139.jpg"
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or cat.get("frequency") not in FREQUENCIES:
            got = cat.get("frequency") if isinstance(cat, dict) else cat
            raise BadAnnotationError(
                f"{path}: categories[{i}] needs a frequency in {FREQUENCIES} (LVIS format), got {got!r}"
            )
    return data
