"""The ``diffdet`` command (also ``python -m diffdet``).

Each subcommand lives in its own module and registers itself in :data:`SUBCOMMANDS` as
``name -> (help, add_arguments, run)``, so this file only dispatches.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable


def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _info_run(args: argparse.Namespace) -> int:
    from diffdet.info import collect, format_info

    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _lazy(module: str, name: str) -> Callable:
    """``module.name``, imported on first use so that ``diffdet --help`` stays fast."""
    import importlib

    return getattr(importlib.import_module(module), name)


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "info": ("versions, built backends, and the backend each op uses", _info_args, _info_run),
    "quickstart": (
        "generate synthetic data, train a small detector on the CPU, evaluate it and draw its detections",
        lambda parser: _lazy("diffdet.quickstart", "add_arguments")(parser),
        lambda args: _lazy("diffdet.quickstart", "run")(args),
    ),
    "train": (
        "train a detector from a YAML config (also under torchrun for DDP)",
        lambda parser: _lazy("diffdet.train", "add_arguments")(parser),
        lambda args: _lazy("diffdet.train", "run_args")(args),
    ),
    "detect": (
        "detect objects in an image or a folder: annotated images and a COCO-results JSON",
        lambda parser: _lazy("diffdet.detect", "detect_args")(parser),
        lambda args: _lazy("diffdet.detect", "detect_main")(args),
    ),
    "eval": (
        "COCO box AP of a checkpoint on a COCO-format dataset (pycocotools; LVIS files: the LVIS API)",
        lambda parser: _lazy("diffdet.detect", "eval_args")(parser),
        lambda args: _lazy("diffdet.detect", "eval_main")(args),
    ),
    "bench": (
        "end-to-end speed (and AP) over a num_boxes x steps grid, beside the reference backend",
        lambda parser: _lazy("diffdet.benchmark.cli", "bench_args")(parser),
        lambda args: _lazy("diffdet.benchmark.cli", "bench_main")(args),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="diffdet", description="Fast, faithful DiffusionDet: detection by denoising diffusion."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffdet`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from diffdet.detect import USAGE_ERROR
    from diffdet.optional import MissingDependencyError

    try:
        return SUBCOMMANDS[args.command][2](args)
    except MissingDependencyError as err:  # e.g. `diffdet eval` where pycocotools is not installed
        print(f"diffdet {args.command}: error: {err}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
