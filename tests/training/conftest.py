"""Shared fixture of the training tests: a tiny synthetic dataset on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffdet.data.synthetic import SyntheticSpec, generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    # Every test that uses it reads it through CocoDetection, which needs pycocotools.
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")
    spec = SyntheticSpec(
        num_train=8,
        num_val=4,
        min_image_size=48,
        max_image_size=64,
        max_objects=3,
        max_object_size=24,
        seed=1,
    )
    return generate(tmp_path_factory.mktemp("shapes"), spec)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every training test runs with one thread (tests/conftest.py); the kill/resume test also runs
    its subprocess with one thread."""
