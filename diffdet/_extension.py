"""Loading of the compiled op library ``diffdet._C`` and what it provides.

Importing ``diffdet._C`` registers the C++/CUDA kernels of every op under ``torch.ops.diffdet``.
When it is missing (a pure-Python checkout) or was built without CUDA, each op falls back to its
plain-PyTorch reference: :func:`has_kernel` tells the op layer which backends exist.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def load_error() -> str | None:
    """None when ``diffdet._C`` is loaded, else why it could not be."""
    try:
        from diffdet import _C  # noqa: F401  (import registers the ops)
    except ImportError as exc:
        return f"diffdet._C could not be imported ({exc})"
    return None


def is_loaded() -> bool:
    """Whether the compiled op library is loaded."""
    return load_error() is None


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.diffdet.<op>`` has a compiled kernel for ``device_type`` ("cpu"/"cuda")."""
    if not is_loaded():
        return False
    name = f"diffdet::{op}"
    if not torch._C._dispatch_has_kernel(name):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, device_type.upper())


def registered_ops() -> list[str]:
    """Names of the ops registered in namespace ``diffdet``, sorted."""
    if not is_loaded():
        return []
    names = torch._C._dispatch_get_all_op_names()
    return sorted(n.split("::", 1)[1] for n in names if n.startswith("diffdet::"))
