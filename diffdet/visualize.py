"""Pictures of detections: boxes, class names and scores drawn with Pillow.

Used by ``diffdet quickstart`` (a grid of validation images) and ``diffdet detect``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Distinct colours (RGB), cycled by class label.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
)  # fmt: skip


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """An RGB PIL image from a uint8 [3, H, W] tensor, a float [3, H, W] tensor in [0, 1], an
    [H, W, 3] uint8 array or a PIL image.

    Raises:
        ValueError: any other shape or dtype.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a [3, H, W] tensor, got {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round()
        image = image.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if not (
        isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    ):
        raise ValueError("image must be a [3, H, W] tensor, an [H, W, 3] uint8 array or a PIL image")
    return Image.fromarray(image)


def draw_detections(
    image: torch.Tensor | np.ndarray | Image.Image,
    detections: dict[str, torch.Tensor],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
) -> Image.Image:
    """Draw one image's detections.

    Args:
        image: the image the boxes refer to (see :func:`to_pil`).
        detections (dict): ``boxes`` [n, 4] xyxy pixels of ``image``, ``scores`` [n], ``labels`` [n].
        class_names (Sequence[str] | None): name per label (the label number when None).
        score_threshold (float): detections scoring below it are not drawn.

    Returns:
        PIL.Image.Image: a copy of the image with a coloured box and a "name score" tag per detection.
    """
    picture = to_pil(image).copy()
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    boxes = detections["boxes"].detach().float().cpu().tolist()
    scores = detections["scores"].detach().float().cpu().tolist()
    labels = detections["labels"].detach().cpu().tolist()
    for box, score, label in sorted(zip(boxes, scores, labels, strict=True), key=lambda d: d[1]):
        if score < score_threshold:
            continue
        colour = PALETTE[int(label) % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=2)
        name = class_names[int(label)] if class_names is not None else str(int(label))
        text = f"{name} {score:.2f}"
        x, y = box[0], max(0.0, box[1] - 11)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return picture


def save_grid(pictures: Sequence[Image.Image], path: str | Path, columns: int = 4) -> Path:
    """Tile pictures (row-major, each cell the size of the largest) into one PNG or JPEG file.

    Raises:
        ValueError: no pictures, or ``columns`` < 1.
    """
    if not pictures:
        raise ValueError("pictures must hold at least one image")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    columns = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    cell_w = max(p.width for p in pictures)
    cell_h = max(p.height for p in pictures)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    for i, picture in enumerate(pictures):
        grid.paste(picture, ((i % columns) * cell_w, (i // columns) * cell_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
