"""``diffdet eval``: score a detector on a COCO, LVIS or CrowdHuman dataset.

COCO and LVIS files print the box AP table (pycocotools, the LVIS API); a CrowdHuman ``.odgt`` file
prints AP50, mMR, recall and JI, one row per ``--boxes`` x ``--steps`` setting. Shows a progress bar,
and stops with a one-line error (exit status 2) naming the file when an input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffdet.cli.options import USAGE_ERROR, dtype, inference_args, knobs, load_detector, pick_device
from diffdet.data.build import coco_dataset, crowdhuman_dataset
from diffdet.errors import InputError
from diffdet.evaluation.crowdhuman_run import class_label, run_crowdhuman_eval, sweep
from diffdet.evaluation.evaluator import run_eval

COLUMNS = ("boxes", "steps", "AP50", "mMR", "recall", "JI")


def format_metrics(metrics: dict[str, float]) -> str:
    """The AP table: one row of names, one of values in percent (-1 where a size or group has no GT)."""
    names = "".join(f"{m:>8}" for m in metrics)
    values = "".join(f"{100 * v:>8.2f}" if v >= 0 else f"{-1:>8}" for v in metrics.values())
    return f"{names}\n{values}"


def eval_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet eval``."""
    parser.add_argument(
        "--data", required=True, metavar="JSON", help="COCO or LVIS JSON, or CrowdHuman .odgt annotations"
    )
    parser.add_argument(
        "--images", default=None, help="image folder (default: COCO layout, or Images/ beside a .odgt file)"
    )
    inference_args(parser, several=True)
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--max-images", type=int, default=0, help="evaluate the first N images only (0: all)")
    parser.add_argument(
        "--results", help="also write the detections here (COCO results, or CrowdHuman odgt lines)"
    )
    parser.add_argument("--metrics-out", metavar="JSON", help="also write the metrics here")
    parser.add_argument(
        "--class", dest="class_name", default=None, metavar="NAME",
        help="CrowdHuman: score this class of the weights (e.g. person for a COCO model, zero-shot)",
    )  # fmt: skip
    parser.add_argument(
        "--crowdhuman-box", choices=("vbox", "fbox", "hbox"), default="vbox",
        help="CrowdHuman box scored: visible body (default, as the paper's Table 1), full body, or head",
    )  # fmt: skip


def _require_lvis() -> None:
    """Fail before inference, not after it, when the LVIS API is missing."""
    from diffdet.evaluation.lvis import require_lvis

    try:
        require_lvis()
    except ImportError as err:
        raise InputError(str(err)) from err


def eval_main(args: argparse.Namespace) -> int:
    """``diffdet eval``: prints the AP table; returns the exit status (2 on an unusable input)."""
    if Path(args.data).suffix.lower() == ".odgt":
        return eval_crowdhuman_main(args)
    try:
        if args.class_name is not None:
            raise InputError("--class applies to CrowdHuman (.odgt) evaluation only")
        dataset = coco_dataset(args.data, args.images, args.max_images)
        if dataset.is_lvis:
            _require_lvis()
        model = load_detector(args.weights, pick_device(args.device), args.runtime, dtype=dtype(args.dtype))
        metrics = run_eval(
            model, dataset, batch_size=args.batch_size, progress=not args.no_progress,
            results_path=Path(args.results) if args.results else None, **knobs(args),
        )  # fmt: skip
    except InputError as err:
        print(f"diffdet eval: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(f"{'LVIS' if dataset.is_lvis else 'COCO'} box AP over {len(dataset)} image(s) of {args.data}:")
    print(format_metrics(metrics))
    if args.metrics_out:
        Path(args.metrics_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics_out).write_text(json.dumps(metrics, indent=2))
    return 0


def format_rows(rows: list[dict[str, float]]) -> str:
    """The metrics table: a header, then one row per setting (metrics in percent)."""
    lines = ["".join(f"{c:>8}" for c in COLUMNS)]
    for row in rows:
        lines.append(
            f"{row['boxes']:>8}{row['steps']:>8}" + "".join(f"{100 * row[c]:>8.2f}" for c in COLUMNS[2:])
        )
    return "\n".join(lines)


def eval_crowdhuman_main(args: argparse.Namespace) -> int:
    """``diffdet eval`` on a ``.odgt`` file: prints the table; returns the exit status (2 on bad input)."""
    try:
        if args.weights.lower().endswith((".onnx", ".pt2")):
            raise InputError(f"--weights {args.weights}: CrowdHuman evaluation runs PyTorch weights only")
        dataset = crowdhuman_dataset(args.data, args.images, args.max_images, args.crowdhuman_box)
        model = load_detector(args.weights, pick_device(args.device))
        label = class_label(model, args.class_name)
        rows = run_crowdhuman_eval(
            model, dataset, label, batch_size=args.batch_size, seed=args.seed,
            settings=sweep(args.boxes, args.steps), progress=not args.no_progress,
            results_path=Path(args.results) if args.results else None,
        )  # fmt: skip
    except InputError as err:
        print(f"diffdet eval: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(
        f"CrowdHuman ({args.crowdhuman_box}) over {len(dataset)} image(s) of {args.data}, "
        f"class {model.class_names[label]!r} of the weights:"
    )
    print(format_rows(rows))
    if args.metrics_out:
        Path(args.metrics_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics_out).write_text(json.dumps(rows, indent=2))
    return 0
