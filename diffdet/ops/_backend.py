"""Choice of backend for every op, by the device of its inputs.

CUDA tensors use the compiled CUDA kernel or the Triton kernel; CPU tensors use the compiled C++
kernel. ``DIFFDET_BACKEND`` overrides the choice everywhere: ``reference`` forces the plain-PyTorch
reference (debugging, parity), ``compiled`` or ``triton`` force that backend (and fail loudly if it
cannot run), ``published`` runs what the published DiffusionDet code runs (torchvision's roi_align per
level as detectron2's ROIPooler, torchvision's batched_nms, the plain-PyTorch reference elsewhere): the
baseline of speed comparisons with the published code. A backend that is not available falls back
to the reference with one warning per op and device type, never silently and never with a crash.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from diffdet import _extension

BACKENDS = ("compiled", "triton", "reference", "published")
PUBLISHED_OPS = ("roi_align_multilevel", "batched_nms")
"""Ops the published code runs through torchvision; under ``published`` the others run their reference."""


@functools.cache
def triton_error() -> str | None:
    """None when Triton is importable, else why not."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton could not be imported ({exc})"
    return None


def triton_interpret() -> bool:
    """Whether Triton runs its kernels in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forced_backend() -> str | None:
    """The backend named by ``DIFFDET_BACKEND``, or None when unset."""
    value = os.environ.get("DIFFDET_BACKEND", "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(f"DIFFDET_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value


def _unavailable(op: str, backend: str, device_type: str) -> str | None:
    """None when ``backend`` can run ``op`` on ``device_type``, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend == "published":
        if op in PUBLISHED_OPS and importlib.util.find_spec("torchvision") is None:
            return "torchvision is not installed"
        return None
    if backend == "compiled":
        if not _extension.is_loaded():
            return _extension.load_error()
        if not _extension.has_kernel(op, device_type):
            return f"diffdet._C has no {device_type.upper()} kernel for {op} (built without it)"
        return None
    if triton_error() is not None:
        return triton_error()
    if device_type == "cpu" and not triton_interpret():
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    if device_type not in ("cpu", "cuda"):
        return f"Triton does not run on {device_type}"
    return None


@functools.cache
def _warn_once(op: str, device_type: str, reason: str) -> None:
    warnings.warn(
        f"diffdet: {op} falls back to its PyTorch reference on {device_type}: {reason}",
        RuntimeWarning,
        stacklevel=4,
    )


def select(op: str, device: torch.device, preferred: dict[str, str]) -> str:
    """Name the backend that runs ``op`` for tensors on ``device``.

    Args:
        op: the op's name, e.g. "roi_align_multilevel".
        device: the device of the op's inputs.
        preferred: the fast backend per device type, e.g. {"cpu": "compiled", "cuda": "compiled"};
            a device type absent from it runs the reference.

    Returns:
        "compiled", "triton", "reference" or "published" (only when forced; an op outside
        :data:`PUBLISHED_OPS` then runs its reference).

    Raises:
        RuntimeError: DIFFDET_BACKEND forces a backend that cannot run here.
    """
    device_type = device.type
    forced = forced_backend()
    if forced is not None:
        reason = _unavailable(op, forced, device_type)
        if reason is not None:
            raise RuntimeError(f"DIFFDET_BACKEND={forced} cannot run {op} on {device_type}: {reason}")
        return forced
    want = preferred.get(device_type, "reference")
    reason = _unavailable(op, want, device_type)
    if reason is None:
        return want
    _warn_once(op, device_type, reason)
    return "reference"


def describe(op: str, preferred: dict[str, str]) -> dict[str, str]:
    """What ``op`` would run for CPU and CUDA tensors, with the reason for any fallback."""
    out = {}
    for device_type in ("cpu", "cuda"):
        want = forced_backend() or preferred.get(device_type, "reference")
        reason = _unavailable(op, want, device_type)
        out[device_type] = want if reason is None else f"reference ({want} unavailable: {reason})"
    return out
