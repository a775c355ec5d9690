"""``diffdet info``: versions, the CPU (ISA, native bf16), built backends, and which backend each op
uses per device."""

from __future__ import annotations

import platform
import sys
import sysconfig

import torch

import diffdet
from diffdet import _extension
from diffdet.hardware import cpu_info
from diffdet.ops import OP_BACKENDS
from diffdet.ops._backend import describe, forced_backend, triton_error, triton_interpret


def _triton_version() -> str:
    if triton_error() is not None:
        return f"not available ({triton_error()})"
    import triton

    return triton.__version__


def collect() -> dict:
    """Everything ``diffdet info`` prints, as a JSON-serialisable dict."""
    compiled = {
        "loaded": _extension.is_loaded(),
        "error": _extension.load_error(),
        "ops": _extension.registered_ops(),
        "cpu": any(_extension.has_kernel(op, "cpu") for op in OP_BACKENDS),
        "cuda": any(_extension.has_kernel(op, "cuda") for op in OP_BACKENDS),
    }
    return {
        "diffdet": diffdet.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "compiler": sysconfig.get_config_var("CC") or "unknown",
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "triton": _triton_version(),
        "triton_interpret": triton_interpret(),
        "forced_backend": forced_backend(),
        "compiled": compiled,
        "ops": {op: describe(op, preferred) for op, preferred in OP_BACKENDS.items()},
    }


def _cpu_line(cpu: dict) -> str:
    """``model, ISA (torch: capability), native bf16: yes|no``."""
    native = "yes" if cpu["native_bf16"] else "no (emulated: use fp32)"
    return f"{cpu['model']}, {cpu['isa']} (torch: {cpu['torch_capability']}), native bf16: {native}"


def format_info(info: dict) -> str:
    """Human-readable rendering of :func:`collect`."""
    c = info["compiled"]
    lines = [
        f"diffdet      {info['diffdet']}",
        f"python       {info['python']} ({info['platform']})",
        f"compiler     {info['compiler']}",
        f"cpu          {_cpu_line(info['cpu'])}",
        f"torch        {info['torch']} (CUDA {info['torch_cuda'] or 'none'}; "
        f"device available: {info['cuda_available']}{', ' + info['gpu'] if info['gpu'] else ''})",
        f"triton       {info['triton']}{' [TRITON_INTERPRET=1]' if info['triton_interpret'] else ''}",
        "",
        "backends built:",
        f"  C++ CPU    {'yes' if c['cpu'] else 'no'}",
        f"  CUDA       {'yes' if c['cuda'] else 'no'}",
        f"  Triton     {'yes' if not info['triton'].startswith('not') else 'no'}",
    ]
    if c["error"]:
        lines.append(f"  ({c['error']})")
    if info["forced_backend"]:
        lines.append(f"DIFFDET_BACKEND={info['forced_backend']}")
    lines += ["", f"{'op':<24}{'cpu tensors':<28}cuda tensors"]
    for op, where in info["ops"].items():
        lines.append(f"{op:<24}{where['cpu']:<28}{where['cuda']}")
    return "\n".join(lines)
