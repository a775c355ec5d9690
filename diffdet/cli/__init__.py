"""The ``diffdet`` command (also ``python -m diffdet``).

The command line's room: a module per subcommand (``detect``, ``eval``, ``bench``, ``quickstart``,
``info``; ``train`` is :mod:`diffdet.train`, for ``python -m diffdet.train``), option helpers in
:mod:`diffdet.cli.options`. Each subcommand registers itself in :data:`SUBCOMMANDS` as
``name -> (help, add_arguments, run)``, so this file only dispatches. Nothing in the library imports
from this package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _lazy(module: str, name: str) -> Callable:
    """``module.name``, imported on first use so that ``diffdet --help`` stays fast."""
    import importlib

    return getattr(importlib.import_module(module), name)


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "info": (
        "versions, built backends, and the backend each op uses",
        lambda parser: _lazy("diffdet.cli.info", "info_args")(parser),
        lambda args: _lazy("diffdet.cli.info", "info_main")(args),
    ),
    "quickstart": (
        "generate synthetic data, train a small detector on the CPU, evaluate it and draw its detections",
        lambda parser: _lazy("diffdet.cli.quickstart", "add_arguments")(parser),
        lambda args: _lazy("diffdet.cli.quickstart", "run")(args),
    ),
    "train": (
        "train a detector from a YAML config (also under torchrun for DDP)",
        lambda parser: _lazy("diffdet.train", "add_arguments")(parser),
        lambda args: _lazy("diffdet.train", "run_args")(args),
    ),
    "detect": (
        "detect objects in an image or a folder: annotated images and a COCO-results JSON",
        lambda parser: _lazy("diffdet.cli.detect", "detect_args")(parser),
        lambda args: _lazy("diffdet.cli.detect", "detect_main")(args),
    ),
    "eval": (
        "COCO box AP of a checkpoint on a COCO-format dataset (pycocotools; LVIS files: the LVIS API)",
        lambda parser: _lazy("diffdet.cli.eval", "eval_args")(parser),
        lambda args: _lazy("diffdet.cli.eval", "eval_main")(args),
    ),
    "bench": (
        "end-to-end speed (and AP) over a num_boxes x steps grid, beside the reference backend",
        lambda parser: _lazy("diffdet.cli.bench", "bench_args")(parser),
        lambda args: _lazy("diffdet.cli.bench", "bench_main")(args),
    ),
    "export": (
        "write a detector as a fixed-shape ONNX or torch.export (.pt2) graph, noise as an input",
        lambda parser: _lazy("diffdet.cli.export", "export_args")(parser),
        lambda args: _lazy("diffdet.cli.export", "export_main")(args),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from diffdet.cli.failure import CommandParser

    parser = CommandParser(
        prog="diffdet", description="Fast, faithful DiffusionDet: detection by denoising diffusion."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffdet`` console script; returns the exit status (2 with one line on stderr
    on unusable input, :mod:`diffdet.cli.failure`)."""
    from diffdet.cli.failure import run_command

    parser = build_parser()

    def parse_and_run() -> int:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return run_command(f"diffdet {args.command}", lambda: SUBCOMMANDS[args.command][2](args))

    return run_command(parser.prog, parse_and_run)


if __name__ == "__main__":
    sys.exit(main())
