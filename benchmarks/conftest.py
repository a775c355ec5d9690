"""Shared helpers of the kernel micro-benchmarks: the machine's name and the JSON results files.

A benchmark hands each measured row to the ``record_result`` fixture; at the end of the session the
rows of each benchmark module go to ``benchmarks/results/<module>-<machine>.json`` with the machine,
torch version and commit, and, per (op, mode, shape, dtype), every provider's p50 time relative to
the row's ``baseline`` provider (``speedup`` > 1: faster than the baseline, measured in the same run).
``DIFFDET_BENCH_RESULTS=DIR`` writes them under DIR instead (the GPU suite collects them there).
Nothing is written when pytest-benchmark is disabled (``--benchmark-disable``: a smoke run).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from diffdet.bench.report import device_name, git_commit

RESULTS = Path(os.environ.get("DIFFDET_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
_ROWS: dict[str, list[dict]] = defaultdict(list)


def machine_name() -> str:
    """The GPU's name when CUDA is available, else the CPU model with the threads torch uses."""
    if torch.cuda.is_available():
        return device_name(torch.device("cuda"))
    return device_name(torch.device("cpu")).removeprefix("CPU ")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _speedups(rows: list[dict]) -> list[dict]:
    """Per (op, mode, shape, dtype): each provider's baseline p50 / its p50."""
    groups: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        groups[(r["op"], r["mode"], r["shape"], r["dtype"], r["baseline"])][r["provider"]] = r["p50_ms"]
    out = []
    for (op, mode, shape, dtype, baseline), times in groups.items():
        if baseline in times:
            for provider, ms in times.items():
                if provider != baseline:
                    speedup = round(times[baseline] / ms, 3)
                    out.append(
                        dict(
                            op=op,
                            mode=mode,
                            shape=shape,
                            dtype=dtype,
                            provider=provider,
                            baseline=baseline,
                            speedup=speedup,
                        )
                    )
    return out


@pytest.fixture
def record_result(request, benchmark) -> Callable[[dict], None]:
    """Record one measured row: op, provider, mode, shape, dtype, baseline, p50_ms (p20_ms, p80_ms ...)."""

    def record(row: dict) -> None:
        benchmark.extra_info.update(row)
        if not benchmark.disabled:
            _ROWS[request.module.__name__.rsplit(".", 1)[-1]].append(row)

    return record


def pytest_sessionfinish(session, exitstatus) -> None:
    if not _ROWS:
        return
    machine = machine_name()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for module, rows in _ROWS.items():
        payload = {
            "machine": machine,
            "torch": torch.__version__,
            "commit": git_commit(),
            "speedups": _speedups(rows),
            "records": rows,
        }
        (RESULTS / f"{module}-{_slug(machine)}.json").write_text(json.dumps(payload, indent=2) + "\n")
