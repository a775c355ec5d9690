"""Fixtures shared across the test folders."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run with one intra-op thread, then restore the previous count.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core CPU the threads' spinning
    costs seconds per iteration (10x seen on a loaded CI machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
