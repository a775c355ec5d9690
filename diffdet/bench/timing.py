"""Wall-clock timing of device work: CUDA events on a GPU, ``time.perf_counter`` on the CPU.

A :class:`Clock` hands out marks; on CUDA a mark is an event recorded on the current stream, so
marking never synchronises and the regions between marks can be read after one final
:meth:`Clock.sync`. On the CPU a mark is the current time. Times are milliseconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch


class Clock:
    """Marks on one device; the time between two marks in milliseconds.

    Args:
        device: where the timed work runs; CUDA devices use CUDA events, anything else perf_counter.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def mark(self) -> torch.cuda.Event | float:
        """A point in time: a recorded CUDA event (no sync) or ``perf_counter()`` seconds."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def sync(self) -> None:
        """Wait for the device (a no-op on the CPU); call before :meth:`elapsed_ms` on CUDA marks."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def elapsed_ms(self, start: torch.cuda.Event | float, end: torch.cuda.Event | float) -> float:
        """Milliseconds from ``start`` to ``end`` (both from :meth:`mark`, device synced)."""
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1e3


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, as ``numpy.percentile``.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not values:
        raise ValueError("values must not be empty")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, p90, min and mean of per-call times.

    Returns:
        ``{"median_ms", "p90_ms", "min_ms", "mean_ms", "iters"}``.
    """
    return {
        "median_ms": percentile(times_ms, 50.0),
        "p90_ms": percentile(times_ms, 90.0),
        "min_ms": min(times_ms),
        "mean_ms": sum(times_ms) / len(times_ms),
        "iters": len(times_ms),
    }


def time_calls(fn: Callable[[], object], clock: Clock, *, warmup: int, iters: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` times, each timed on its own.

    On CUDA the marks of all timed calls are read after one sync at the end, so the device is never
    stalled between calls by the timing itself (``fn`` may still sync, as detection does once).

    Args:
        fn: the work to time (its result is dropped).
        clock: the device's clock.
        warmup: untimed calls first (kernel autotuning, caches, allocator).
        iters: timed calls, >= 1.

    Returns:
        ``iters`` per-call times in milliseconds.

    Raises:
        ValueError: ``iters`` < 1 or ``warmup`` < 0.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    clock.sync()
    marks = []
    for _ in range(iters):
        start = clock.mark()
        fn()
        marks.append((start, clock.mark()))
    clock.sync()
    return [clock.elapsed_ms(start, end) for start, end in marks]
