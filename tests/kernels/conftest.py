"""Shared set-up of the Triton kernel tests.

Without CUDA the kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` must be set before
``triton.jit`` decorates them, so it is set here, before any test module imports ``diffdet.kernels``.
The ``device`` fixture runs a test on every device where the kernels can run in this process; the
Triton path is reached through the public op with ``DIFFDET_BACKEND=triton`` (fixture ``triton_backend``).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_DEVICES = [
    pytest.param(
        "cpu", marks=pytest.mark.skipif(not INTERPRET, reason="Triton runs CPU tensors only when interpreted")
    ),
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]
    ),
]


@pytest.fixture
def triton_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the public ops to their Triton kernels for the duration of a test."""
    monkeypatch.setenv("DIFFDET_BACKEND", "triton")


@pytest.fixture(params=_DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Device of the test: "cpu" (Triton interpreter) or "cuda" (when present)."""
    return request.param
