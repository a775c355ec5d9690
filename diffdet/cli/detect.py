"""``diffdet detect``: run a detector on an image, a folder of images, or a video.

Writes each image with its boxes, class names and scores drawn, and one COCO-results JSON
(``detections.json``) into ``--out``, built beside it and swapped in at the end (never into the input
folder; a non-empty ``--out`` only with ``--overwrite``); a video gives an annotated video and a JSON
lines file of per-frame detections (:mod:`diffdet.inference.video`), written as they come so that an
interrupted run leaves valid files. Shows a progress bar, and stops with a one-line error (exit status
2) naming the file when an input cannot be read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffdet.cli.options import (
    dtype,
    fraction,
    inference_args,
    knobs,
    load_detector,
    pick_device,
    positive_int,
)
from diffdet.cli.tta_options import tta_args, wrap_tta
from diffdet.inference.images import list_images, run_detect
from diffdet.inference.video import is_video, run_detect_video, video_info
from diffdet.outputs import check_output_dir, staged_output_dir


def detect_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet detect``."""
    parser.add_argument(
        "input", metavar="IMAGE_DIR_OR_VIDEO", help="an image, a folder of images, or a video (needs PyAV)"
    )
    inference_args(parser)
    parser.add_argument("--score-thr", type=fraction, default=0.5, help="minimum score kept (default 0.5)")
    parser.add_argument(
        "--out", default="detections",
        help="output folder (default ./detections); never the input folder, and replaced as a whole at "
        "the end of a successful run",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument(
        "--every", type=positive_int, default=1, metavar="N",
        help="video: detect every N-th frame (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, metavar="B",
        help="video: detected frames per forward pass (default 1)",
    )  # fmt: skip
    tta_args(parser)


def detect_main(args: argparse.Namespace) -> int:
    """``diffdet detect``: returns the exit status (unusable input raises InputError, which
    :mod:`diffdet.cli.failure` prints as one line, exit status 2)."""
    if is_video(args.input):
        return detect_video_main(args)
    files = list_images(args.input)
    check_output_dir(Path(args.out), args.overwrite, Path(args.input))
    model = load_detector(args.weights, pick_device(args.device), args.runtime, dtype=dtype(args.dtype))
    model = wrap_tta(model, args, len(files), progress=not args.no_progress)
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
    print(f"{len(files)} image(s) annotated in {args.out}; COCO results in {path}")
    return 0


def detect_video_main(args: argparse.Namespace) -> int:
    """``diffdet detect VIDEO``: returns the exit status (unusable input raises InputError)."""
    path = Path(args.input)
    check_output_dir(Path(args.out), args.overwrite, path)
    model = load_detector(args.weights, pick_device(args.device), args.runtime, dtype=dtype(args.dtype))
    frames = video_info(path)[1]
    model = wrap_tta(model, args, -(-frames // max(args.every, 1)), progress=not args.no_progress)
    run = run_detect_video(
        model, path, Path(args.out), score_thr=args.score_thr, every=args.every,
        batch_size=args.batch_size, progress=not args.no_progress, **knobs(args),
    )  # fmt: skip
    print(f"{run.frames} frame(s) ({run.detected} detected) drawn in {run.video}; detections: {run.jsonl}")
    return 0
