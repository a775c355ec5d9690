"""The device guard of the Triton launchers.

Triton launches on the *current* CUDA device and its current stream, not on the device of the tensors
it is given; the C++ ops make the tensors' device current with a ``CUDAGuard``. A launcher wraps its
launches in :func:`on_device` for the same effect, so tensors on ``cuda:1`` run on ``cuda:1`` (and its
current stream) whatever device is current.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def on_device(device: torch.device) -> AbstractContextManager:
    """Context that makes ``device`` the current CUDA device; a no-op for CPU tensors (interpreter)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
