"""``diffdet detect``: run a detector on an image or a folder of images.

Writes each image with its boxes, class names and scores drawn, and one COCO-results JSON
(``detections.json``) into ``--out``, built beside it and swapped in at the end (never into the input
folder; a non-empty ``--out`` only with ``--overwrite``); shows a progress bar, and stops with a
one-line error (exit status 2) naming the file when an input cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffdet.cli.options import (
    USAGE_ERROR,
    dtype,
    fraction,
    inference_args,
    knobs,
    load_detector,
    pick_device,
)
from diffdet.errors import InputError
from diffdet.inference.images import list_images, run_detect
from diffdet.outputs import check_output_dir, staged_output_dir


def detect_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet detect``."""
    parser.add_argument("input", metavar="IMAGE_OR_DIR", help="an image, or a folder of images")
    inference_args(parser)
    parser.add_argument("--score-thr", type=fraction, default=0.5, help="minimum score kept (default 0.5)")
    parser.add_argument(
        "--out", default="detections",
        help="output folder (default ./detections); never the input folder, and replaced as a whole at "
        "the end of a successful run",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def detect_main(args: argparse.Namespace) -> int:
    """``diffdet detect``: returns the exit status (2 with a message on an unusable input)."""
    try:
        files = list_images(args.input)
        check_output_dir(Path(args.out), args.overwrite, Path(args.input))
        model = load_detector(args.weights, pick_device(args.device), dtype=dtype(args.dtype))
        with staged_output_dir(Path(args.out)) as staging:  # a failed run leaves --out as it was
            path = run_detect(
                model,
                files,
                staging,
                score_thr=args.score_thr,
                progress=not args.no_progress,
                **knobs(args),
            )
        path = Path(args.out) / path.name
    except InputError as err:
        print(f"diffdet detect: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(f"{len(files)} image(s) annotated in {args.out}; COCO results in {path}")
    return 0
