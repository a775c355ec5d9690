"""Repeat-factor sampling (LVIS; detectron2's ``RepeatFactorTrainingSampler``, REFERENCE.md §10).

Repeat factors are computed once over the training list (images without annotations included):

    f(c) = #images with ≥ 1 annotation of c / #images
    r(c) = max(1, sqrt(t / f(c)))                    t = repeat threshold (0.001 for LVIS)
    r(I) = max over the categories c in I of r(c)    1.0 for an image without annotations   (float32)

The index stream is endless: each epoch rounds every r(I) stochastically, floor(r) + [u < frac(r)]
with one u ~ U[0, 1) per image, lists each image index that many times in dataset order, and
shuffles the list with ``randperm``; all of it from one ``torch.Generator`` seeded once, so epochs
follow each other from the same generator and their lengths vary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


def repeat_factors_from_category_frequency(
    image_categories: list[Iterable[int]], repeat_threshold: float
) -> Tensor:
    """Per-image repeat factors r(I) from category frequencies (detectron2's
    ``repeat_factors_from_category_frequency``).

    Args:
        image_categories (list[Iterable[int]]): per training image, the category ids of its
            annotations (repeats allowed; an empty iterable for an image without annotations).
        repeat_threshold (float): t; categories in a smaller fraction of the images are repeated.

    Returns:
        Tensor[N]: float32 repeat factors, ≥ 1.

    Raises:
        ValueError: ``repeat_threshold`` is not positive, or there are no images.
    """
    if not repeat_threshold > 0:
        raise ValueError(f"repeat_threshold must be > 0, got {repeat_threshold}")
    if not image_categories:
        raise ValueError("image_categories must hold at least one image")
    per_image = [set(ids) for ids in image_categories]
    images_with: dict[int, int] = {}
    for ids in per_image:
        for cat in ids:
            images_with[cat] = images_with.get(cat, 0) + 1
    num_images = len(per_image)
    # Python floats (float64) as detectron2 computes them, cast to float32 at the end.
    category_rep = {
        cat: max(1.0, math.sqrt(repeat_threshold / (count / num_images)))
        for cat, count in images_with.items()
    }
    factors = [max((category_rep[c] for c in ids), default=1.0) for ids in per_image]
    return torch.tensor(factors, dtype=torch.float32)


def repeat_factor_indices(repeat_factors: Tensor, seed: int) -> Iterator[int]:
    """The endless global stream of image indices (every process generates the same one).

    Args:
        repeat_factors (Tensor[N]): float32 r(I) of every image (see
            :func:`repeat_factors_from_category_frequency`).
        seed (int): seed of the stream's single generator.

    Yields:
        int: image indices in 0..N−1, epoch after epoch.
    """
    int_part = torch.trunc(repeat_factors)
    frac_part = repeat_factors - int_part
    generator = torch.Generator().manual_seed(seed)
    while True:
        rands = torch.rand(len(frac_part), generator=generator)
        reps = (int_part + (rands < frac_part).float()).long()  # [N]
        indices = torch.repeat_interleave(torch.arange(len(reps)), reps)  # each i, r_i times, in order
        yield from indices[torch.randperm(len(indices), generator=generator)].tolist()
