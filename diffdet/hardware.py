"""What this CPU can do for the model's dtypes: its widest matrix ISA and whether bf16 is native.

Only CPUs with AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``) run bfloat16 arithmetic in hardware.
Elsewhere (AVX2, plain AVX512) oneDNN and ATen convert every bf16 operand to fp32 and back in software,
so a bf16 model runs several times slower than the same model in fp32 with no accuracy to gain:
``diffdet.load(..., dtype=torch.bfloat16)`` and ``--dtype bf16`` then warn once
(:func:`warn_if_bf16_is_emulated`) and run bf16 anyway, as asked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ISA_FLAGS = (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16"), ("AVX512", "avx512f"), ("AVX2", "avx2"))
"""(name, /proc/cpuinfo flag) of the matrix ISAs oneDNN uses, widest first."""
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of the ISAs with bf16 arithmetic in hardware."""
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The flags :func:`cpu_info` lists."""

EMULATED_BF16_SLOWDOWN = (5.2, 11.0)
"""bf16 over fp32 time of a R50 detection (1 step x 300 boxes) where bf16 is emulated, lowest and
highest of our measurements: 9.5x on an AMD EPYC (AVX2) at 800x1216 (24.4 s vs 2.57 s, #19); 5.2x
(2 threads) and 11.0x (1 thread) on an Intel Xeon with oneDNN and ATen held to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``) at 320x480, fp32 and bf16 interleaved by
``diffdet bench``. All on loaded shared CPUs, so rough figures; docs/backends.md gives the runs."""

_warned = False


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (its first ``flags`` line), or None where that file
    or line does not exist (macOS, Windows)."""
    value = _cpuinfo_field("flags")
    return None if value is None else frozenset(value.split())


def cpu_model_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what :mod:`platform` knows."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_isa() -> str:
    """The widest of AMX / AVX512-BF16 / AVX512 / AVX2 this CPU has (/proc/cpuinfo flags), else what
    ``torch.backends.cpu.get_cpu_capability()`` reports (e.g. "AVX512", "DEFAULT")."""
    flags = cpu_flags() or frozenset()
    for name, flag in ISA_FLAGS:
        if flag in flags:
            return name
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU runs bf16 arithmetic in hardware (AMX or AVX512-BF16).

    From /proc/cpuinfo where it exists; elsewhere from torch's own CPU probes (False when this torch
    has none).
    """
    flags = cpu_flags()
    if flags is not None:
        return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def cpu_info() -> dict[str, object]:
    """The ``cpu`` entry of ``diffdet info``: ``model``, ``isa`` (see :func:`cpu_isa`), ``flags`` (those
    of :data:`REPORTED_FLAGS` present, or None without /proc/cpuinfo), ``torch_capability`` and
    ``native_bf16``."""
    flags = cpu_flags()
    return {
        "model": cpu_model_name(),
        "isa": cpu_isa(),
        "flags": None if flags is None else [f for f in REPORTED_FLAGS if f in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
    }


def bf16_emulation_message() -> str:
    """The one-line warning of :func:`warn_if_bf16_is_emulated`."""
    low, high = EMULATED_BF16_SLOWDOWN
    return (
        f"bf16 on this CPU ({cpu_isa()}, no AVX512-BF16/AMX) is emulated: {low:g}-{high:g}x slower "
        "than fp32 in our measurements (R50); use --dtype fp32 (dtype=torch.float32). Running bf16 as asked."
    )


def warn_if_bf16_is_emulated(
    device: torch.device | str, dtype: torch.dtype | None, emit: Callable[[str], None] | None = None
) -> bool:
    """Warn once per process when bf16 weights are asked for on a CPU without bf16 arithmetic.

    Args:
        device: where the model runs; only CPU devices can warn.
        dtype: the weights' dtype; only torch.bfloat16 can warn.
        emit: called with the one-line message instead of ``warnings.warn(..., RuntimeWarning)``
            (the CLI prints it as one stderr line).

    Returns:
        Whether this call warned (False when it has warned before, or bf16 is native, or not asked).
    """
    global _warned
    if _warned or dtype != torch.bfloat16 or torch.device(device).type != "cpu" or cpu_has_native_bf16():
        return False
    _warned = True
    message = bf16_emulation_message()
    if emit is None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    else:
        emit(message)
    return True


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo, or None (no such file or field)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None
