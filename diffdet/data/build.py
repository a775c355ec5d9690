"""Evaluation datasets from the paths a user gives: the COCO, LVIS and CrowdHuman release layouts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.errors import InputError

if TYPE_CHECKING:
    from diffdet.data.coco import CocoDetection
    from diffdet.data.crowdhuman import CrowdHumanDetection


def coco_dataset(annotations: str | Path, images: str | Path | None, max_images: int = 0) -> CocoDetection:
    """A COCO-format dataset; without ``images`` the COCO layout is assumed:
    ``root/annotations/instances_NAME.json`` -> images in ``root/NAME``, and for LVIS files
    detectron2's: ``datasets/lvis/lvis_v1_val.json`` -> the COCO root ``datasets/coco``.

    Raises:
        InputError: the annotation file is missing or malformed, or the image folder does not exist.
    """
    from diffdet.data.coco import CocoDetection
    from diffdet.errors import BadAnnotationError

    annotations = Path(annotations)
    if not annotations.is_file():
        raise InputError(f"annotation file {annotations} does not exist")
    if images is None and annotations.stem.startswith("lvis"):
        images = annotations.parent.parent / "coco"  # LVIS images: COCO's train2017/ and val2017/
    elif images is None:
        images = annotations.parent.parent / annotations.stem.removeprefix("instances_")
    if not Path(images).is_dir():
        raise InputError(f"image folder {images} does not exist or is not a folder (pass --images)")
    try:
        return CocoDetection(images, annotations, max_images=max_images)
    except (FileNotFoundError, BadAnnotationError) as err:
        raise InputError(str(err)) from err


def crowdhuman_dataset(
    annotations: str | Path, images: str | Path | None, max_images: int = 0, box: str = "vbox"
) -> CrowdHumanDetection:
    """A CrowdHuman dataset; without ``images``, the release layout: ``Images/`` beside the odgt file.

    Raises:
        InputError: the odgt file is missing or malformed (file and line named), the image folder does
            not exist, or an image is missing or unreadable.
    """
    from diffdet.data.crowdhuman import CrowdHumanDetection
    from diffdet.errors import BadAnnotationError, BadImageError

    annotations = Path(annotations)
    if not annotations.is_file():
        raise InputError(f"annotation file {annotations} does not exist")
    images = Path(images) if images is not None else annotations.parent / "Images"
    if not images.is_dir():
        raise InputError(f"image folder {images} does not exist or is not a folder (pass --images)")
    try:
        return CrowdHumanDetection(images, annotations, max_images=max_images, box=box)
    except (FileNotFoundError, BadAnnotationError, BadImageError) as err:
        raise InputError(str(err)) from err


def evaluation_dataset(
    annotations: str | Path, images: str | Path | None, max_images: int = 0, crowdhuman_box: str = "vbox"
) -> CocoDetection:
    """:func:`crowdhuman_dataset` for a ``.odgt`` file, else :func:`coco_dataset` (COCO or LVIS format).

    Raises:
        InputError: see those two.
    """
    from diffdet.data.crowdhuman import is_odgt

    if is_odgt(annotations):
        return crowdhuman_dataset(annotations, images, max_images, crowdhuman_box)
    return coco_dataset(annotations, images, max_images)
