"""LVIS v1's 1203 categories, shipped with the package (no LVIS file is needed to build a model).

The data is ``lvis_v1_categories.json`` beside this module: the categories of ``lvis_v1_val.json``
(id, name, synset, frequency) with the per-category ``image_count`` of ``lvis_v1_train.json``, the
same counts detectron2 bundles as ``lvis_v1_category_image_count.py`` (REFERENCE.md §10).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

LVIS_V1_NUM_CLASSES = 1203
"""Number of LVIS v1 categories (ids 1..1203, contiguous label = id - 1)."""


@dataclass(frozen=True)
class LvisCategory:
    """One LVIS v1 category.

    Attributes:
        id: LVIS category id (1..1203).
        name: category name, e.g. "aerosol_can".
        synset: WordNet synset, e.g. "aerosol.n.02".
        frequency: "r" (rare, < 10 training images), "c" (common, 10-99) or "f" (frequent, >= 100).
        image_count: training images with at least one annotation of the category.
    """

    id: int
    name: str
    synset: str
    frequency: str
    image_count: int


@functools.cache
def lvis_v1_categories() -> tuple[LvisCategory, ...]:
    """The 1203 LVIS v1 categories sorted by id (label i is entry i)."""
    data = json.loads((Path(__file__).with_name("lvis_v1_categories.json")).read_text())
    categories = tuple(
        LvisCategory(c["id"], c["name"], c["synset"], c["frequency"], c["image_count"])
        for c in sorted(data["categories"], key=lambda c: c["id"])
    )
    if [c.id for c in categories] != list(range(1, LVIS_V1_NUM_CLASSES + 1)):
        raise RuntimeError("the shipped lvis_v1_categories.json must hold ids 1..1203")
    return categories
