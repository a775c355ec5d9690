"""Detection on image files: annotated pictures and a COCO-results JSON (``diffdet detect``'s library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.errors import InputError
from diffdet.outputs import write_text_atomic

if TYPE_CHECKING:  # torch and the data stack load on first use, so ``diffdet --help`` stays fast
    import torch
    from PIL import Image
    from torch import nn

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: str | Path) -> list[Path]:
    """The image files ``path`` names: itself, or the images directly in a folder, sorted by name.

    Raises:
        InputError: ``path`` does not exist, or a folder holds no image (suffixes in IMAGE_SUFFIXES).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{path}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_ids(files: list[Path]) -> list[int]:
    """COCO image ids for files: the number in each stem when all stems are distinct integers (COCO's
    ``000000000009.jpg`` is image 9), else 0..N-1 in the given order."""
    stems = [p.stem for p in files]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(files)))


def _as_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 [3, H, W] tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def run_detect(
    model: nn.Module,
    files: list[Path],
    out_dir: Path,
    *,
    score_thr: float,
    progress: bool = True,
    **inference_kwargs: object,
) -> Path:
    """Detect objects in ``files``; write annotated images and ``detections.json`` under ``out_dir``.

    Args:
        model: a detector in eval mode with ``class_names`` and ``category_ids``.
        files: image files (any Pillow format; EXIF orientation applied, converted to RGB).
        out_dir: output folder (created); annotated images keep their file names (as PNG when the
            input is not JPEG or PNG).
        score_thr: keep detections with score >= this (in the pictures and the JSON).
        progress: show a progress bar.
        **inference_kwargs: per-call knobs for the model (``num_boxes``, ``steps``, ``seed``...).

    Returns:
        Path of the COCO-results JSON: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h]
        (original-image pixels), "score"}``; image ids from :func:`image_ids`.

    Raises:
        BadImageError (an InputError): an image cannot be decoded or is too elongated for the model's
            resize (the message names the file).
    """
    from tqdm import tqdm

    from diffdet.data.coco import read_image
    from diffdet.data.transforms import check_resizable
    from diffdet.evaluation.results import to_coco_results
    from diffdet.visualize import draw_detections

    out_dir.mkdir(parents=True, exist_ok=True)
    device = model.device
    results = []
    for file, image_id in tqdm(
        list(zip(files, image_ids(files), strict=True)), desc="detect", unit="img", disable=not progress
    ):
        image = read_image(str(file))  # BadImageError (an InputError) names the file
        check_resizable(
            image.height, image.width, model.cfg.min_size_test, model.cfg.max_size_test, str(file)
        )
        output = model([_as_tensor(image).to(device)], **inference_kwargs)[0]
        keep = output["scores"] >= score_thr
        output = {k: v[keep].cpu() for k, v in output.items()}
        results.extend(to_coco_results(image_id, output, list(model.category_ids)))
        name = file.name if file.suffix.lower() in (".jpg", ".jpeg", ".png") else file.stem + ".png"
        draw_detections(image, output, model.class_names, score_threshold=score_thr).save(out_dir / name)
    return write_text_atomic(out_dir / "detections.json", json.dumps(results))
