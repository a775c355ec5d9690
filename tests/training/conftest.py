"""Shared fixture of the training tests: a tiny synthetic dataset on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffdet.data.synthetic import SyntheticSpec, generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
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
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU the threads' spinning
    costs seconds per iteration; the kill/resume test also runs its subprocess with one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
