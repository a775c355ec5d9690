"""``diffdet detect``: run a detector on an image or a folder of images.

Writes each image with its boxes, class names and scores drawn, and one COCO-results JSON
(``detections.json``); shows a progress bar, and stops with a one-line error (exit status 2) naming the
file when an input cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffdet.cli.options import USAGE_ERROR, dtype, inference_args, knobs, load_detector, pick_device
from diffdet.errors import InputError
from diffdet.inference.images import list_images, run_detect


def detect_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet detect``."""
    parser.add_argument("input", metavar="IMAGE_OR_DIR", help="an image, or a folder of images")
    inference_args(parser)
    parser.add_argument("--score-thr", type=float, default=0.5, help="minimum score kept (default 0.5)")
    parser.add_argument("--out", default="detections", help="output folder (default ./detections)")


def detect_main(args: argparse.Namespace) -> int:
    """``diffdet detect``: returns the exit status (2 with a message on an unusable input)."""
    try:
        files = list_images(args.input)
        model = load_detector(args.weights, pick_device(args.device), args.runtime, dtype=dtype(args.dtype))
        path = run_detect(
            model,
            files,
            Path(args.out),
            score_thr=args.score_thr,
            progress=not args.no_progress,
            **knobs(args),
        )
    except InputError as err:
        print(f"diffdet detect: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(f"{len(files)} image(s) annotated in {args.out}; COCO results in {path}")
    return 0
