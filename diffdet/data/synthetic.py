"""A seeded synthetic shapes dataset written to disk in COCO format (the quickstart's data).

Each image has a textured background (a random colour ramp, low-frequency blotches, pixel noise and
a few faint lines) and 1..``max_objects`` filled shapes of four classes: rectangle, ellipse,
triangle and cross, in random colours that contrast with the background, of varied sizes, and
overlapping each other by at most ``max_overlap`` IoU (later shapes are drawn on top). Boxes are the
tight pixel extent of each shape as drawn; ``area`` is its pixel count.

Layout under ``root``::

    train/000000.png ...            val/000000.png ...
    annotations/instances_train.json   annotations/instances_val.json

Run ``python -m diffdet.data.synthetic ROOT`` to write it from the command line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("rectangle", "ellipse", "triangle", "cross")


@dataclass
class SyntheticSpec:
    """What to generate.

    Attributes:
        num_train: training images.
        num_val: validation images.
        min_image_size: smallest image side in pixels.
        max_image_size: largest image side in pixels.
        min_objects: fewest shapes per image.
        max_objects: most shapes per image.
        min_object_size: smallest shape side in pixels.
        max_object_size: largest shape side in pixels (capped at half the image's short side).
        max_overlap: largest IoU between a new shape's box and an existing one.
        seed: seed of everything drawn.
    """

    num_train: int = 600
    num_val: int = 100
    min_image_size: int = 96
    max_image_size: int = 128
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: int = 16
    max_object_size: int = 48
    max_overlap: float = 0.3
    seed: int = 0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [h, w, 3] textured background in [0, 255]."""
    base = rng.uniform(40, 215, size=3)
    ramp = rng.uniform(-40, 40, size=3)
    direction = rng.uniform(-1, 1, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (direction[0] * xx / w + direction[1] * yy / h)[..., None]
    coarse = rng.normal(0, 18, size=(4 + h // 32, 4 + w // 32, 3)).astype(np.float32)
    blotches = np.asarray(
        Image.fromarray(((coarse + 128).clip(0, 255)).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        ),
        dtype=np.float32,
    )
    image = base + ramp * t + (blotches - 128) + rng.normal(0, 8, size=(h, w, 3))
    return image.clip(0, 255).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random RGB colour at least 90 away (Euclidean) from the mean background colour."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(100):
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - mean) > 90:
            break
    return tuple(int(c) for c in colour)


def _draw_shape(
    draw: ImageDraw.ImageDraw, cls: int, box: tuple[int, int, int, int], fill, apex: float
) -> None:
    """Draw shape ``cls`` spanning the pixel box (x0, y0, x1, y1); ``apex`` ∈ [0, 1] places a triangle tip."""
    x0, y0, x1, y1 = box
    if CLASSES[cls] == "rectangle":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif CLASSES[cls] == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif CLASSES[cls] == "triangle":
        tip = round(x0 + apex * (x1 - x0))
        draw.polygon([(tip, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # cross: two bars of a third of the box
        tw, th = max(1, (x1 - x0) // 3), max(1, (y1 - y0) // 3)
        draw.rectangle((x0, y0 + th, x1, y1 - th), fill=fill)
        draw.rectangle((x0 + tw, y0, x1 - tw, y1), fill=fill)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ``{"category": int, "bbox": [x, y, w, h], "area": int}``."""
    h, w = (int(v) for v in rng.integers(spec.min_image_size, spec.max_image_size + 1, size=2))
    background = _background(rng, h, w)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    placed: list[np.ndarray] = []
    masks: list[tuple[int, np.ndarray]] = []
    largest = max(spec.min_object_size, min(spec.max_object_size, min(h, w) // 2))
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        for _attempt in range(20):
            bw, bh = (int(v) for v in rng.integers(spec.min_object_size, largest + 1, size=2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            box = np.array([x0, y0, x0 + bw, y0 + bh], dtype=np.float64)
            if all(_iou(box, other) <= spec.max_overlap for other in placed):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        mask_image = Image.new("L", (w, h), 0)
        apex, corners = float(rng.random()), (x0, y0, x0 + bw - 1, y0 + bh - 1)
        _draw_shape(ImageDraw.Draw(mask_image), cls, corners, 255, apex)
        _draw_shape(draw, cls, corners, _contrasting_colour(rng, background), apex)
        mask = np.asarray(mask_image) > 0
        for _, earlier in masks:  # later shapes hide what they cover
            earlier &= ~mask
        placed.append(box)
        masks.append((cls, mask))
    objects = []
    for cls, mask in masks:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append({"category": cls, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum())})
    return image, objects


def _write_split(root: Path, split: str, count: int, rng: np.random.Generator, spec: SyntheticSpec) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        image, objects = make_image(rng, spec)
        file_name = f"{image_id:06d}.png"
        image.save(root / split / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": image.height, "width": image.width})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category"] + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))
    return path


def generate(root: str | Path, spec: SyntheticSpec | None = None) -> dict[str, Path]:
    """Write the train and val splits under ``root`` (overwriting any earlier files there).

    Args:
        root (str | Path): output folder.
        spec (SyntheticSpec | None): what to draw; defaults to :class:`SyntheticSpec()`.

    Returns:
        dict[str, Path]: ``train_images``, ``train_annotations``, ``val_images``, ``val_annotations``.
        The same spec (seed included) always gives byte-identical files.
    """
    spec = spec or SyntheticSpec()
    if not 1 <= spec.min_objects <= spec.max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {spec.min_objects}, {spec.max_objects}")
    if not 8 <= spec.min_object_size <= spec.max_object_size:
        raise ValueError(
            "need 8 <= min_object_size <= max_object_size, "
            f"got {spec.min_object_size}, {spec.max_object_size}"
        )
    if spec.min_image_size < 2 * spec.min_object_size or spec.min_image_size > spec.max_image_size:
        raise ValueError(
            f"need 2*min_object_size <= min_image_size <= max_image_size, got {spec.min_image_size}, "
            f"{spec.max_image_size}"
        )
    root = Path(root)
    rng_train, rng_val = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(2))
    return {
        "train_images": root / "train",
        "train_annotations": _write_split(root, "train", spec.num_train, rng_train, spec),
        "val_images": root / "val",
        "val_annotations": _write_split(root, "val", spec.num_val, rng_val, spec),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m diffdet.data.synthetic ROOT [--num-train N] [--num-val N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    parser.add_argument("--num-train", type=int, default=SyntheticSpec.num_train)
    parser.add_argument("--num-val", type=int, default=SyntheticSpec.num_val)
    parser.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    args = parser.parse_args(argv)
    paths = generate(args.root, SyntheticSpec(num_train=args.num_train, num_val=args.num_val, seed=args.seed))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
