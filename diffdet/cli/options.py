"""Option helpers shared by the ``diffdet`` subcommands: value parsers, the model and inference options,
the device and the weights."""

from __future__ import annotations

import argparse
import math
import re
from typing import TYPE_CHECKING

from diffdet.cli.failure import USAGE_ERROR as USAGE_ERROR  # the subcommands import it from here
from diffdet.errors import InputError, shown

if TYPE_CHECKING:  # torch loads on first use, so ``diffdet --help`` stays fast
    import torch
    from torch import nn

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""``--dtype`` names -> torch dtype names (torch is imported on first use)."""
RUNTIMES = ("onnxruntime", "openvino", "torch")
"""``--runtime`` names (those of :data:`diffdet.export.backends.RUNTIMES`; kept here so the parser
imports no engine)."""


def ints(text: str) -> list[int]:
    """``--boxes 300,500``: comma-separated integers."""
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {shown(text)}") from err


def positive_int(text: str) -> int:
    """An integer >= 1 (``--batch-size``, ``--boxes``, ``--steps``)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``--max-images``: 0 means all)."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, low: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {shown(text)}")
    return value


def positive_ints(text: str) -> list[int]:
    """``--boxes 300,500``: comma-separated integers, each >= 1."""
    values = ints(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {shown(text)}")
    return values


def fraction(text: str) -> float:
    """A number in [0, 1] (``--score-thr``); NaN and infinities are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # False for NaN too
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {shown(text)}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """``--size 800x1333``: height x width in pixels."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW such as 800x1333, got {shown(text)}")
    return int(match[1]), int(match[2])


def pick_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name as given.

    Raises:
        InputError: not a device name, or a CUDA device is asked for but none is available.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"--device {shown(name)[1:-1]}: not a device name (cpu, cuda, cuda:1...)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available")
    return device


def load_detector(
    weights: str,
    device: torch.device,
    runtime: str | None = None,
    threads: int | None = None,
    **overrides: object,
) -> nn.Module:
    """``diffdet.load(weights)`` on ``device`` in eval mode, with load errors turned into InputError
    (and bf16 on a CPU without bf16 arithmetic announced in one stderr line, see :mod:`diffdet.hardware`);
    an exported file (``.onnx``, ``.pt2``) loads in ``runtime`` (default: by suffix) with ``threads``
    engine threads (None: the engine's default) instead, see :func:`diffdet.export.runtime.load_exported`."""
    from diffdet.checkpoint import load
    from diffdet.export.runtime import is_exported, load_exported

    if is_exported(weights):
        model = load_exported(weights, runtime, threads, device="cpu" if device.type == "cpu" else "cuda")
        wanted = overrides.pop("dtype", None)
        exported = str(model.metadata.get("dtype", "fp32"))
        if wanted is not None and str(wanted).removeprefix("torch.") not in (exported, DTYPES.get(exported)):
            raise InputError(f"--dtype: {weights} runs in {exported}, the dtype it was exported in")
        return model
    if runtime is not None:
        raise InputError(f"--runtime {runtime} runs exported files (.onnx, .pt2), not {weights}")
    warn_if_bf16_is_emulated(device, overrides.get("dtype"))
    try:
        return load(weights, device=device, **overrides)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"--weights {weights}: {err}") from err


def inference_args(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """The model and inference options; ``several``: --boxes and --steps take comma-separated lists
    (a sweep, written as ``diffdet bench`` writes its grid)."""
    if several:
        kind = positive_ints
        sweep = "; a comma-separated list sweeps CrowdHuman evaluation"
    else:
        kind, sweep = positive_int, ""
    parser.add_argument(
        "--weights", required=True,
        help="checkpoint file or preset name (see diffdet.load), or an exported .onnx / .pt2 file",
    )  # fmt: skip
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default=None,
        help="engine of an exported --weights file (default: onnxruntime for .onnx, torch for .pt2)",
    )  # fmt: skip
    parser.add_argument("--boxes", type=kind, help=f"boxes per image (default: the model's){sweep}")
    parser.add_argument("--steps", type=kind, help=f"DDIM sampling steps (default: the model's){sweep}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's random boxes")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda when available)"
    )
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default="fp32",
        help="weights' dtype: bf16 runs backbone, FPN and head in bfloat16 (boxes, sampler and NMS "
        "stay float32; fast on CPUs with AMX or AVX512-BF16, and on GPUs; emulated and several times "
        "slower than fp32 on other CPUs, which a warning says) (default fp32)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def warn_if_bf16_is_emulated(device: torch.device, dtype: torch.dtype | None) -> None:
    """One stderr line, once, when bf16 runs emulated on this CPU (see :mod:`diffdet.hardware`)."""
    import sys

    from diffdet.hardware import warn_if_bf16_is_emulated as warn

    warn(device, dtype, emit=lambda message: print(f"diffdet: warning: {message}", file=sys.stderr))


def one(value: int | list[int] | None, flag: str) -> int | None:
    """A single --boxes / --steps value (eval parses lists, and only CrowdHuman evaluation sweeps)."""
    if not isinstance(value, list):
        return value
    if not value:
        return None
    if len(value) > 1:
        raise InputError(
            f"{flag} takes one value here (several values sweep CrowdHuman .odgt evaluation only)"
        )
    return value[0]


def dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, DTYPES[name])


def knobs(args: argparse.Namespace) -> dict[str, object]:
    return {"num_boxes": one(args.boxes, "--boxes"), "steps": one(args.steps, "--steps"), "seed": args.seed}
