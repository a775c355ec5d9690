"""Process-group helpers for single-process, torchrun and SLURM (``srun``) training.

Under ``torchrun`` the environment holds RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
under ``srun`` :func:`launch_from_env` derives them from SLURM's variables. :func:`init_distributed`
then joins the group with NCCL on CUDA devices and gloo on the CPU, every collective bounded by
``train.dist_timeout``. Without them everything runs as rank 0 of 1 and no process group is created.

A peer that dies or stops answering turns into a :class:`DistributedError` on the others (one line
naming the rank and the timeout) instead of a hang or a backend traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

import torch
import torch.distributed as dist

from diffdet.errors import DistributedError

# Backend errors on a dead or silent peer are plain RuntimeErrors whose text names the backend.
_BACKEND_MARKERS = ("gloo", "nccl", "processgroup", "connection closed by peer", "connection reset by peer")


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


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``"gpu[03-04,07],cpu1"`` -> ``"gpu03"``.

    Each bracketed range keeps its first value with its zero padding (``"n[1-2]-ib[5-6]"`` ->
    ``"n1-ib5"``), as ``scontrol show hostnames`` would list first.
    """
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if first is None:
        raise ValueError(f"cannot read a host from SLURM node list {nodelist!r}")
    return re.sub(r"\[([^\]\-,]*)[^\]]*\]", r"\1", first.group(0))


def slurm_launch_env(environ: MutableMapping[str, str]) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for an ``srun``
    task, from SLURM's; empty where torchrun's are already set or SLURM's are absent.

    The step's variables (SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST) win over the job's, so an
    ``srun`` that uses part of the allocation forms its own group. MASTER_ADDR is the step's first
    node (rank 0 lives there); MASTER_PORT, unless set, is 10000 + SLURM_JOB_ID mod 20000 so that
    two jobs sharing a node do not collide.
    """
    if "RANK" in environ or "SLURM_PROCID" not in environ:
        return {}
    world_size = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS"))
    lists = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
    nodelist = next((environ[k] for k in lists if k in environ), None)
    if world_size is None or nodelist is None:
        return {}
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": world_size,
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_slurm_host(nodelist),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(10000 + int(environ.get("SLURM_JOB_ID", 0)) % 20000),
    }


def launch_from_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Under ``srun`` (no torchrun variables), set torchrun's variables from SLURM's in ``environ``
    (``os.environ`` by default); returns what was set (empty under torchrun or alone)."""
    environ = os.environ if environ is None else environ
    env = slurm_launch_env(environ)
    environ.update(env)
    return env


def resolve_device(name: str) -> torch.device:
    """The training device: "auto" picks CUDA when available; with several processes per machine,
    cuda:LOCAL_RANK (cuda:0 when the launcher shows each process one GPU, e.g. ``--gpus-per-task=1``)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    use_cuda = torch.cuda.is_available() if name == "auto" else name == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if not use_cuda:
        return torch.device("cpu")
    return local_gpu()


def local_gpu() -> torch.device:
    """This process's GPU: cuda:LOCAL_RANK, or cuda:0 when the launcher shows each process one GPU.

    Raises:
        DistributedError: LOCAL_RANK is beyond the GPUs this machine shows.
    """
    local_rank, visible = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise DistributedError(f"LOCAL_RANK={local_rank} but this machine shows only {visible} CUDA devices")
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device, timeout_s: float) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1; returns whether this
    call created it.

    Args:
        device (torch.device): this process's training device.
        timeout_s (float): seconds the rendezvous, and later every collective, may wait for the others.

    Raises:
        DistributedError: the group did not form within ``timeout_s`` (a process never started, or
            MASTER_ADDR:MASTER_PORT is unreachable).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1 or is_distributed():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except (RuntimeError, ValueError) as err:  # DistStoreError, DistNetworkError; env:// misconfigured
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise DistributedError(
            f"rank {os.environ.get('RANK')} of {world_size}: the process group at {where} did not form "
            f"within train.dist_timeout={timeout_s:g} s ({_one_line(err)}); start all {world_size} "
            "processes, with the same MASTER_ADDR and MASTER_PORT"
        ) from err
    return True


def shutdown() -> None:
    """Leave the process group (also after a failed collective, so the process exits cleanly)."""
    if is_distributed():
        dist.destroy_process_group()


def _one_line(err: BaseException) -> str:
    """The gist of a backend error: its first sentence without the source-location prefix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")


def _is_backend_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and any(marker in text for marker in _BACKEND_MARKERS)
    )


@contextlib.contextmanager
def peer_failures_as_errors(timeout_s: float) -> Iterator[None]:
    """Turn a failed collective (a peer died, or did not answer within ``timeout_s``) into a
    :class:`DistributedError` naming this rank and the timeout; other errors pass unchanged."""
    try:
        yield
    except Exception as err:
        if not is_distributed() or isinstance(err, DistributedError) or not _is_backend_failure(err):
            raise
        raise DistributedError(
            f"rank {get_rank()} of {get_world_size()}: a collective failed ({_one_line(err)}): another "
            f"process died or did not answer within train.dist_timeout={timeout_s:g} s; stopping"
        ) from err


def local_device(device: torch.device) -> torch.device:
    """``device``, with a CUDA device without index made this process's GPU (:func:`local_gpu`)."""
    if device.type == "cuda" and device.index is None:
        return local_gpu()
    return device


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
