"""Training checkpoints: what is saved for an exact ``--resume``, and where.

A checkpoint is one file ``model_{iteration:07d}.pth`` (``model_final.pth`` at the end) written
atomically (temp file, fsync, rename) by rank 0, holding the model, optimiser, scheduler, grad
scaler, EMA, iteration, the data-stream position, the config, and every process's RNG states. The
text file ``last_checkpoint`` names the newest one and is itself replaced atomically after the
checkpoint is complete, so a kill at any moment leaves a loadable last checkpoint.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from diffdet.checkpoint.safe_io import atomic_save, torch_load
from diffdet.errors import InputError, MissingFileError

LAST_CHECKPOINT = "last_checkpoint"


class ResumeMismatchError(InputError):
    """``--resume`` cannot continue this checkpoint exactly: it was written by another number of
    processes, batch split or seed, or the processes do not see the same output folder."""


def capture_rng() -> dict:
    """The RNG states of this process: torch (CPU and every CUDA device), numpy and Python."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    """Restore states saved by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_name(iteration: int, final: bool = False) -> str:
    """File name of the checkpoint after ``iteration`` optimiser steps."""
    return "model_final.pth" if final else f"model_{iteration:07d}.pth"


def write_checkpoint(output_dir: str | Path, name: str, payload: dict) -> Path:
    """Write ``payload`` atomically to ``output_dir/name`` and point ``last_checkpoint`` at it."""
    output_dir = Path(output_dir)
    path = atomic_save(payload, output_dir / name)
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=f".{LAST_CHECKPOINT}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, output_dir / LAST_CHECKPOINT)
    return path


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``last_checkpoint`` names in ``output_dir``, or None when there is none."""
    pointer = Path(output_dir) / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    path = Path(output_dir) / pointer.read_text().strip()
    if not path.is_file():
        raise MissingFileError(f"{pointer} names {path.name}, which does not exist")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load a training checkpoint (no code is unpickled; tensors on the CPU)."""
    payload = torch_load(path)
    missing = {"model", "optimizer", "scheduler", "iteration", "rng"} - set(
        payload if isinstance(payload, dict) else {}
    )
    if missing:
        raise InputError(f"{path} is not a diffdet training checkpoint (missing {sorted(missing)})")
    return payload
