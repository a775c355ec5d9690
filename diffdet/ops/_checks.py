"""Input checks shared by every op's Python face and its fake (meta) kernel.

Each check looks at metadata only (shape, dtype, device), never at values, so it costs no host
sync on CUDA. Failures raise ValueError naming the argument, what was expected and what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x: object) -> torch.Tensor:
    """Raise unless ``x`` is a tensor; return it."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_shape(name: str, x: torch.Tensor, shape: Sequence[int | None]) -> None:
    """Raise unless ``x.shape`` matches ``shape``, where None matches any size.

    Example: ``check_shape("boxes", boxes, (None, 4))`` accepts [K, 4].
    """
    check_tensor(name, x)
    ok = x.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape, strict=True))
    if not ok:
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must be [{want}], got {tuple(x.shape)}")


def check_dtype(name: str, x: torch.Tensor, dtypes: Sequence[torch.dtype]) -> None:
    """Raise unless ``x.dtype`` is one of ``dtypes``."""
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({allowed}), got {str(x.dtype).removeprefix('torch.')}")


def check_floating(name: str, x: torch.Tensor) -> None:
    """Raise unless ``x`` is float16/bfloat16/float32/float64."""
    check_dtype(name, x, FLOATING)


def check_same_device(named: dict[str, torch.Tensor]) -> None:
    """Raise unless every tensor lives on the same device."""
    items = list(named.items())
    first_name, first = items[0]
    for name, x in items[1:]:
        if x.device != first.device:
            raise ValueError(f"{name} is on {x.device} but {first_name} is on {first.device}")


def check_same_dtype(named: dict[str, torch.Tensor]) -> None:
    """Raise unless every tensor has the same dtype."""
    items = list(named.items())
    first_name, first = items[0]
    for name, x in items[1:]:
        if x.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but {first_name} has {first.dtype}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is > 0 (or >= 0 with ``allow_zero``)."""
    if not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
