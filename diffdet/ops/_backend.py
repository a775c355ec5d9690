"""Choice of backend for every op, by the device of its inputs, and the one switch to the published
computation.

CUDA tensors use the compiled CUDA kernel or the Triton kernel; CPU tensors use the compiled C++
kernel. ``DIFFDET_BACKEND`` overrides the choice everywhere, and :func:`set_backend` overrides
``DIFFDET_BACKEND`` (both are read per call): ``reference`` forces the plain-PyTorch reference
(debugging, parity), ``compiled`` or ``triton`` force that backend (and fail loudly if it cannot run),
``published`` runs what the published DiffusionDet code runs end to end (:func:`published_mode`): for
the ops, torchvision's roi_align per level as detectron2's ROIPooler, torchvision's batched_nms and the
plain-PyTorch reference elsewhere; for the model, the NCHW backbone with every FrozenBN unfolded, the
published Swin attention arithmetic and the published sampler's ensemble. A backend that is not
available falls back to the reference with one warning per op and device type, never silently and
never with a crash.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from diffdet import _extension

BACKENDS = ("compiled", "triton", "reference", "published")
AUTO = "auto"
"""The :func:`set_backend` name of the default choice by device (``DIFFDET_BACKEND`` ignored)."""
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


_override: str | None = None
"""The name :func:`set_backend` holds (None: ``DIFFDET_BACKEND`` decides)."""


class BackendSetting:
    """What :func:`set_backend` returns: the setting is already applied; as a context manager it
    restores the previous setting on exit."""

    def __init__(self, name: str | None, previous: str | None) -> None:
        self.name, self.previous = name, previous

    def __enter__(self) -> BackendSetting:
        return self

    def __exit__(self, *exc: object) -> None:
        global _override
        _override = self.previous

    def __repr__(self) -> str:
        return f"set_backend({self.name!r})"


def set_backend(name: str | None) -> BackendSetting:
    """Choose the backend of every op (and, for ``published``, the published model computation).

    Process-wide and read per call; overrides ``DIFFDET_BACKEND``. Use it as a call
    (``diffdet.set_backend("published")``) or as a context manager (``with diffdet.set_backend(
    "published"): ...``), which restores the previous setting on exit.

    Args:
        name: one of :data:`BACKENDS`; ``"auto"`` for the default fast choice by device whatever
            ``DIFFDET_BACKEND`` says; None to hand the choice back to ``DIFFDET_BACKEND``.

    Returns:
        A :class:`BackendSetting` (already applied).

    Raises:
        ValueError: ``name`` is not a backend (the message names it).
    """
    global _override
    if name is not None:
        if not isinstance(name, str) or name.strip().lower() not in (*BACKENDS, AUTO):
            raise ValueError(f"backend must be one of {(*BACKENDS, AUTO)} or None, got {name!r}")
        name = name.strip().lower()
    setting = BackendSetting(name, _override)
    _override = name
    return setting


def forced_backend() -> str | None:
    """The backend :func:`set_backend` or else ``DIFFDET_BACKEND`` names, or None for the default
    choice by device (neither set, or ``set_backend("auto")``)."""
    if _override is not None:
        return None if _override == AUTO else _override
    value = os.environ.get("DIFFDET_BACKEND", "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(f"DIFFDET_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value


def published_mode() -> bool:
    """Whether the published computation is on (``set_backend("published")`` or
    ``DIFFDET_BACKEND=published``): the model then takes the published code's path wherever its fast
    path differs (NCHW unfolded backbone, Swin attention arithmetic, ``ensemble="reference"``)."""
    return forced_backend() == "published"


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
            raise RuntimeError(f"backend {forced} cannot run {op} on {device_type}: {reason}")
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
