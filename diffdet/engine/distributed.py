"""Process-group helpers for single-process and torchrun (DDP) training.

Under ``torchrun`` the environment holds RANK, WORLD_SIZE and LOCAL_RANK; :func:`init_distributed`
then joins the group with NCCL on CUDA devices and gloo on the CPU. Without them everything runs as
rank 0 of 1 and no process group is created.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the process that logs, evaluates with pycocotools and writes checkpoints."""
    return get_rank() == 0


def resolve_device(name: str) -> torch.device:
    """The training device: "auto" picks CUDA when available; under torchrun, cuda:LOCAL_RANK."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    use_cuda = torch.cuda.is_available() if name == "auto" else name == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_distributed():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def local_device(device: torch.device) -> torch.device:
    """``device``, with a CUDA device without index made this process's GPU: cuda:LOCAL_RANK under
    torchrun (cuda:0 otherwise)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def process_group_from_env(device: torch.device, timeout: timedelta = timedelta(minutes=30)) -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL for a CUDA ``device``, gloo else).

    Args:
        device: this process's device (made current when it is a GPU).
        timeout: how long any collective (and the rendezvous) waits for the other processes.

    Returns:
        bool: whether a process group was created (False: one process, or a group already exists).
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_distributed():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return True


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every process's ``obj`` (picklable) in rank order on rank ``dst``, None on the others;
    ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_across_processes(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any of them."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        dist.barrier()
