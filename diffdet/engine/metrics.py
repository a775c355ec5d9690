"""The JSON-lines metrics log and the progress bar (rank 0 only)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm import tqdm


class MetricsLog:
    """Appends one JSON object per line to ``path`` (``metrics.jsonl`` in the output folder).

    Lines are ``{"iter": i, "time": unix seconds, ...}``: training lines hold the loss terms,
    ``lr`` and ``images_per_s``; evaluation lines hold ``"eval": {"AP": ..., "AP50": ..., ...}``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, iteration: int, **values: object) -> None:
        """Append one record."""
        record = {"iter": iteration, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class Progress:
    """A tqdm bar over iterations showing loss, lr and images/s (tqdm adds the ETA).

    Args:
        start (int): iterations already done (after a resume).
        total (int): the run's max_iter.
        enabled (bool): False on ranks other than 0.
    """

    def __init__(self, start: int, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, initial=start, disable=not enabled, dynamic_ncols=True, unit="it")
        self.last_time = time.perf_counter()

    def update(self, loss: float, lr: float, images: int) -> float:
        """Advance one iteration of ``images`` images; returns the images/s of that iteration."""
        now = time.perf_counter()
        rate = images / max(now - self.last_time, 1e-9)
        self.last_time = now
        shown = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
        self.bar.set_postfix_str(f"loss={shown} lr={lr:.3g} img/s={rate:.1f}", refresh=False)
        self.bar.update(1)
        return rate

    def pause(self) -> None:
        """Exclude time spent outside training (evaluation, checkpointing) from the next rate."""
        self.last_time = time.perf_counter()

    def close(self) -> None:
        self.bar.close()
