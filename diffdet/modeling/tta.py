"""Test-time augmentation: the published ``DiffusionDetWithTTA`` as it is written to work (REFERENCE.md §11).

Each image becomes one input per test size and flip (the published 13 sizes, max 4000, with flips: 26
inputs, ordered s0, s0-flipped, s1, ...). Each input runs through the detector; its boxes are kept when
their area in the input lies strictly between the squares of the size's scale range (the scale filter),
mapped back to the original image through the inverse of the input's transforms, and pooled; the pool
is merged by soft voting (default) or by detectron2's class-aware NMS (:mod:`tta_merge`).

Where this differs from the published code, on purpose:

- The published code crashes on the first image (REFERENCE.md §11 bugs 1-2); this is what it intends.
- The published augmented image is a resize of the test loader's already resized (800/1333) image; here
  the original is resized once, straight to the same augmented size (the sizes, and so the box mapping,
  are the published ones: the loader size is computed from the model's test size and chained).
- The detector's boxes come back clipped to the augmented image (the published code intends them
  unclipped, before ``detector_postprocess``); the merged boxes are clipped to the original either way.
- Inputs of one shape (a size and its flip, or same-sized images) run as one batch; with a seed, each
  input draws its sampler noise from its own generator seeded with it, so batching changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdet.modeling.preprocess import as_image_list, resized_shape
from diffdet.modeling.tta_merge import NMS_MAX_DETECTIONS, nms_merge, soft_vote_merge

PUBLISHED_SIZES = (400, 500, 600, 640, 700, 900, 1000, 1100, 1200, 1300, 1400, 1800, 800)
"""``TEST.AUG.MIN_SIZES``: shortest edge of each augmented input, pixels (800 last, as published)."""
PUBLISHED_MAX_SIZE = 4000
"""``TEST.AUG.MAX_SIZE``: longest-edge cap of the augmented inputs, pixels."""
PUBLISHED_SCALE_RANGES = {
    400: (96, 10000), 500: (96, 10000), 600: (64, 10000), 640: (64, 10000), 700: (64, 10000),
    900: (0, 10000), 1000: (0, 10000), 1100: (0, 256), 1200: (0, 256), 1300: (0, 192), 1400: (0, 192),
    1800: (0, 96), 800: (0, 10000),
}  # fmt: skip
"""``TEST.AUG.SCALE_RANGES`` by size: a box is kept when min² < w·h < max² in the augmented input (pixels)."""
MERGES = ("softvote", "nms")
REFERENCE_SIZE = 800
"""The test size the published sizes go with (``INPUT.MIN_SIZE_TEST``); :meth:`TTAConfig.scaled` scales
them to another model's."""


@dataclass(frozen=True)
class TTAConfig:
    """What test-time augmentation runs; the defaults are the published ones.

    Attributes:
        sizes: shortest edge of each augmented input, pixels (> 0, at least one).
        max_size: longest-edge cap of every augmented input, pixels.
        flip: also run each size flipped horizontally.
        scale_filter: keep only boxes within their size's scale range.
        scale_ranges: (min, max) box side, pixels of the augmented input, one per size; None takes the
            published range of each size, and no limit for a size the published table lacks.
        merge: "softvote" (published default, cvpods) or "nms" (detectron2's).
        max_detections: detections kept per image; None: the published choice of the merge (the model's
            ``num_proposals`` for soft voting, 100 for NMS).
    """

    sizes: tuple[int, ...] = PUBLISHED_SIZES
    max_size: int = PUBLISHED_MAX_SIZE
    flip: bool = True
    scale_filter: bool = True
    scale_ranges: tuple[tuple[float, float], ...] | None = None
    merge: str = "softvote"
    max_detections: int | None = None

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("TTA sizes must hold at least one size")
        if any(int(s) != s or s <= 0 for s in self.sizes):
            raise ValueError(f"TTA sizes must be positive integers, got {list(self.sizes)}")
        if self.max_size <= 0:
            raise ValueError(f"TTA max_size must be positive, got {self.max_size}")
        if self.scale_ranges is not None and len(self.scale_ranges) != len(self.sizes):
            raise ValueError(
                f"TTA scale_ranges must hold one (min, max) per size: {len(self.sizes)} sizes, "
                f"{len(self.scale_ranges)} ranges"
            )
        if self.merge not in MERGES:
            raise ValueError(f"TTA merge must be one of {MERGES}, got {self.merge!r}")
        if self.max_detections is not None and self.max_detections < 0:
            raise ValueError(f"TTA max_detections must be >= 0 or None, got {self.max_detections}")

    def ranges(self) -> tuple[tuple[float, float], ...]:
        """The scale range of each size (see ``scale_ranges``)."""
        if self.scale_ranges is not None:
            return tuple(self.scale_ranges)
        return tuple(PUBLISHED_SCALE_RANGES.get(s, (0, math.inf)) for s in self.sizes)

    def scaled(self, factor: float) -> TTAConfig:
        """Sizes, max size and scale ranges times ``factor`` (rounded, at least 1 pixel): the published
        augmentation for a model tested at ``factor`` x 800 instead of 800."""
        return dataclasses.replace(
            self,
            sizes=tuple(max(1, round(s * factor)) for s in self.sizes),
            max_size=max(1, round(self.max_size * factor)),
            scale_ranges=tuple((lo * factor, hi * factor) for lo, hi in self.ranges()),
        )


PRESETS = {
    "published": TTAConfig(),
    # Three of the published sizes around the test size, flipped: 6 inputs instead of 26, for CPUs.
    "fast": TTAConfig(sizes=(600, 800, 1000)),
}
"""Named TTA settings: ``published`` (13 sizes x flip, soft vote) and ``fast`` (3 sizes x flip)."""


class AugmentedInput(NamedTuple):
    """One augmented version of an image: which image, which size, flipped or not, and its geometry.

    Attributes:
        image_index: position of the source image in the call.
        size_index: index into the config's sizes (and scale ranges).
        flipped: horizontally flipped after the resize.
        shape: (h, w) of the augmented input, pixels.
        loader_shape: (h, w) of the test loader's resize the published chain starts from.
        original_shape: (h, w) of the source image.
    """

    image_index: int
    size_index: int
    flipped: bool
    shape: tuple[int, int]
    loader_shape: tuple[int, int]
    original_shape: tuple[int, int]


def augmented_inputs(
    original_shape: tuple[int, int], image_index: int, config: TTAConfig, test_size: tuple[int, int]
) -> list[AugmentedInput]:
    """The augmented inputs of one image, in the published order (s0, s0 flipped, s1, ...).

    Args:
        original_shape: (h, w) of the image.
        image_index: its position in the call.
        config: the sizes, max size and flip.
        test_size: (short edge, max size) of the model's test resize (the published loader's 800/1333).
    """
    loader = resized_shape(*original_shape, *test_size)
    flips = (False, True) if config.flip else (False,)
    shapes = [resized_shape(*loader, size, config.max_size) for size in config.sizes]
    return [
        AugmentedInput(image_index, k, flip, shape, loader, original_shape)
        for k, shape in enumerate(shapes)
        for flip in flips
    ]


def make_input(image: Tensor, aug: AugmentedInput) -> Tensor:
    """The augmented image: ``image`` [3, H, W] (uint8, or float in [0, 1]) resized to ``aug.shape``
    (bilinear, antialiased, as the model's own resize) and flipped when ``aug.flipped``; same dtype."""
    if tuple(image.shape[1:]) != aug.shape:
        if image.dtype == torch.uint8 and image.device.type == "cpu":
            image = F.interpolate(image[None], size=aug.shape, mode="bilinear", antialias=True)[0]
        elif image.dtype == torch.uint8:
            out = F.interpolate(image[None].float(), size=aug.shape, mode="bilinear", antialias=True)[0]
            image = out.round().clamp(0, 255).to(torch.uint8)
        else:
            image = F.interpolate(image[None], size=aug.shape, mode="bilinear", antialias=True)[0].clamp(0, 1)
    return image.flip(-1) if aug.flipped else image


def scale_filter(boxes: Tensor, min_side: float, max_side: float) -> Tensor:
    """The published ``filter_boxes``: keep [n] bool where min_side² < w·h < max_side² (strict)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (area > min_side * min_side) & (area < max_side * max_side)


def _resize_boxes(boxes: Tensor, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> Tensor:
    # detectron2's ResizeTransform.apply_coords: float32 coordinates times the Python-float factor.
    fx = to_shape[1] * 1.0 / from_shape[1]
    fy = to_shape[0] * 1.0 / from_shape[0]
    return torch.stack((boxes[:, 0] * fx, boxes[:, 1] * fy, boxes[:, 2] * fx, boxes[:, 3] * fy), dim=1)


def map_boxes_back(boxes: Tensor, aug: AugmentedInput) -> Tensor:
    """xyxy boxes [n, 4] in ``aug``'s pixels -> original-image pixels, through the inverse of the
    published transform chain: unflip, augmented -> loader size, loader -> original size (the last step
    only where they differ, as the published ``pre_tfm``)."""
    boxes = boxes.float()
    if aug.flipped:
        w = aug.shape[1]
        boxes = torch.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), dim=1)
    boxes = _resize_boxes(boxes, aug.shape, aug.loader_shape)
    if aug.loader_shape != aug.original_shape:
        boxes = _resize_boxes(boxes, aug.loader_shape, aug.original_shape)
    return boxes


class DiffusionDetWithTTA(nn.Module):
    """A detector with test-time augmentation; called like the detector in eval mode.

    ``DiffusionDetWithTTA(model)(images, **knobs)`` returns per image ``boxes`` [n, 4] xyxy
    original-image pixels, ``scores`` [n], ``labels`` [n] int64 by decreasing score, merged over the
    augmented inputs of ``config``. It exposes the model's ``class_names``, ``category_ids``,
    ``device`` and ``cfg``, so evaluation and detection take it in place of the model.

    Args:
        model: a DiffusionDet (or anything taking ``(images, resize=False, generator=..., **knobs)``
            and returning detections in input pixels, with ``cfg.min_size_test``, ``cfg.max_size_test``,
            ``cfg.num_proposals`` and ``device``).
        config: the augmentation and merge (default: the published ones).
        batch_size: augmented inputs of one shape per forward pass (an input and its flip share one).
        progress: a callback called with the number of augmented inputs after each forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TTAConfig | None = None,
        *,
        batch_size: int = 2,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.config = config or TTAConfig()
        self.batch_size = batch_size
        self.progress = progress

    # The model's attributes that evaluation, detection and drawing read.
    @property
    def cfg(self):
        """The wrapped model's config."""
        return self.model.cfg

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each contiguous label."""
        return self.model.class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        """Dataset category id of each contiguous label."""
        return self.model.category_ids

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return self.model.device

    def inputs_per_image(self) -> int:
        """Augmented inputs (forward passes' worth of images) per image."""
        return len(self.config.sizes) * (2 if self.config.flip else 1)

    @torch.no_grad()
    def forward(self, images: Tensor | Sequence[Tensor], **knobs: object) -> list[dict[str, Tensor]]:
        """Detect with TTA.

        Args:
            images: a [B, 3, H, W] tensor or a list of [3, H, W] RGB tensors, uint8 or float in [0, 1].
            **knobs: per-call detector knobs (``num_boxes``, ``steps``, ``seed``...); with ``seed`` every
                augmented input draws from its own generator seeded with it; with ``generator`` as a list
                (one per image) every augmented input of an image starts from a copy of its generator.

        Returns:
            Per image a dict ``boxes``, ``scores``, ``labels`` (see the class docstring).
        """
        images = as_image_list(images)
        pooled = self.pooled_detections(images, **knobs)
        return [self.merge(*p, tuple(im.shape[1:])) for p, im in zip(pooled, images, strict=True)]

    def pooled_detections(self, images: list[Tensor], **knobs: object) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image, the (boxes, scores, labels) of all its augmented inputs after the scale filter,
        boxes in original-image pixels, pooled in the published input order."""
        cfg = self.model.cfg
        test_size = (cfg.min_size_test, cfg.max_size_test)
        augs = [
            aug
            for i, im in enumerate(images)
            for aug in augmented_inputs(tuple(im.shape[1:]), i, self.config, test_size)
        ]
        seed = knobs.pop("seed", None)
        per_image = knobs.pop("generator", None) if isinstance(knobs.get("generator"), list) else None
        outputs: list[dict[str, Tensor] | None] = [None] * len(augs)
        for chunk in _batches_by_shape(augs, self.batch_size):
            batch = [make_input(images[augs[j].image_index], augs[j]) for j in chunk]
            if seed is not None:
                device = self.model.device
                knobs["generator"] = [torch.Generator(device=device).manual_seed(int(seed)) for _ in chunk]
            elif per_image is not None:  # one generator per image: each of its inputs starts from its state
                knobs["generator"] = [_copy_generator(per_image[augs[j].image_index]) for j in chunk]
            for j, out in zip(chunk, self.model(batch, resize=False, **knobs), strict=True):
                outputs[j] = out
            if self.progress is not None:
                self.progress(len(chunk))
        ranges = self.config.ranges()
        parts: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in images]
        for aug, out in zip(augs, outputs, strict=True):
            boxes, scores, labels = out["boxes"], out["scores"], out["labels"]
            if self.config.scale_filter:
                keep = scale_filter(boxes, *ranges[aug.size_index])
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            parts[aug.image_index].append((map_boxes_back(boxes, aug), scores.float(), labels.long()))
        return [tuple(torch.cat(field) for field in zip(*p, strict=True)) for p in parts]

    def merge(self, boxes: Tensor, scores: Tensor, labels: Tensor, image_size: tuple[int, int]) -> dict:
        """Merge one image's pooled detections with the configured merge (see :mod:`tta_merge`)."""
        limit = self.config.max_detections
        if self.config.merge == "nms":
            limit = NMS_MAX_DETECTIONS if limit is None else limit
            return nms_merge(boxes, scores, labels, image_size, max_detections=limit)
        limit = self.model.cfg.num_proposals if limit is None else limit
        return soft_vote_merge(boxes, scores, labels, image_size, max_detections=limit)


def _copy_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator in ``generator``'s current state."""
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


def _batches_by_shape(augs: list[AugmentedInput], batch_size: int) -> list[list[int]]:
    """Indices of ``augs`` in chunks of at most ``batch_size`` inputs of one shape, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for j, aug in enumerate(augs):
        groups.setdefault(aug.shape, []).append(j)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
