"""``diffdet eval``: score a detector on a COCO, LVIS or CrowdHuman dataset.

COCO and LVIS files print the box AP table (pycocotools, the LVIS API); a CrowdHuman ``.odgt`` file
prints AP50, mMR, recall and JI, one row per ``--boxes`` x ``--steps`` setting. Shows a progress bar,
and stops with a one-line error (exit status 2) naming the file when an input cannot be read.

Under ``torchrun --nproc_per_node N -m diffdet eval ...`` each process runs every N-th image (gloo on
the CPU, NCCL on GPUs, cuda:LOCAL_RANK each) and rank 0 alone prints and writes the same metrics and
results as one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.cli.options import (
    dtype,
    inference_args,
    knobs,
    load_detector,
    non_negative_int,
    pick_device,
    positive_int,
)
from diffdet.cli.tta_options import tta_args, wrap_tta
from diffdet.data.build import evaluation_dataset
from diffdet.errors import InputError
from diffdet.outputs import check_results_files, write_text_atomic

if TYPE_CHECKING:  # torch loads on first use, so ``diffdet --help`` stays fast
    from torch import nn

    from diffdet.data.coco import CocoDetection

EVAL_DIST_TIMEOUT_S = 1800.0
"""Seconds a sharded evaluation's processes wait for each other (torchrun's default collective timeout)."""
COLUMNS = ("boxes", "steps", "AP50", "mMR", "recall", "JI")


def format_metrics(metrics: dict[str, float]) -> str:
    """The AP table: one row of names, one of values in percent (-1 where a size or group has no GT)."""
    names = "".join(f"{m:>8}" for m in metrics)
    values = "".join(f"{100 * v:>8.2f}" if v >= 0 else f"{-1:>8}" for v in metrics.values())
    return f"{names}\n{values}"


def format_rows(rows: list[dict[str, float]]) -> str:
    """The CrowdHuman table: a header, then one row per setting (metrics in percent)."""
    lines = ["".join(f"{c:>8}" for c in COLUMNS)]
    for row in rows:
        lines.append(
            f"{row['boxes']:>8}{row['steps']:>8}" + "".join(f"{100 * row[c]:>8.2f}" for c in COLUMNS[2:])
        )
    return "\n".join(lines)


def eval_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet eval``."""
    parser.add_argument(
        "--data", required=True, metavar="JSON", help="COCO or LVIS JSON, or CrowdHuman .odgt annotations"
    )
    parser.add_argument(
        "--images", default=None, help="image folder (default: COCO layout, or Images/ beside a .odgt file)"
    )
    inference_args(parser, several=True)
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass")
    parser.add_argument(
        "--max-images", type=non_negative_int, default=0, help="evaluate the first N images only (0: all)"
    )
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
    tta_args(parser)


def class_label(model: nn.Module, class_name: str | None) -> int:
    """The contiguous label scored on CrowdHuman: ``class_name``'s among the model's classes, or 0 for a
    one-class model.

    Raises:
        InputError: the model has no class of that name, or several classes and no ``class_name``.
    """
    names = list(model.class_names)
    if class_name is None:
        if len(names) != 1:
            raise InputError(
                f"the weights detect {len(names)} classes; pass --class NAME to score one of them "
                f"on CrowdHuman (e.g. --class person)"
            )
        return 0
    if class_name not in names:
        raise InputError(
            f"--class {class_name}: the weights have no such class (classes: {', '.join(names[:10])}...)"
        )
    return names.index(class_name)


def check_categories(model: nn.Module, dataset: CocoDetection) -> None:
    """Raises InputError unless the model detects the dataset's categories (COCO and LVIS)."""
    if tuple(model.category_ids) != tuple(dataset.category_ids):
        raise InputError(
            f"the weights detect {len(model.category_ids)} categories (ids {list(model.category_ids)[:5]}..."
            f"), the dataset has {len(dataset.category_ids)} (ids {list(dataset.category_ids)[:5]}...)"
        )


def settings(args: argparse.Namespace, sweep: bool) -> list[dict[str, object]]:
    """The inference settings evaluated: every --boxes x --steps combination when ``sweep``, else the
    single one (None keeps the model's default)."""
    if not sweep:
        return [knobs(args)]
    return [
        {"num_boxes": b, "steps": s, "seed": args.seed}
        for b, s in itertools.product(args.boxes or [None], args.steps or [None])
    ]


def run_eval(
    model: nn.Module, dataset: CocoDetection, settings: list[dict[str, object]], *, label: int = 0,
    batch_size: int = 1, results_path: Path | None = None, progress: bool = True,
) -> list[dict[str, float]] | None:  # fmt: skip
    """The benchmark's metrics of ``model`` on ``dataset`` for each inference setting.

    Args:
        model: a detector in eval mode (``cfg.num_proposals``, ``cfg.sample_steps``).
        dataset: the evaluation set (COCO, LVIS or CrowdHuman; see
            :func:`diffdet.evaluation.build_evaluator`).
        settings: ``{"num_boxes", "steps", "seed"}`` per row (None: the model's defaults).
        label: CrowdHuman: the contiguous class scored.
        batch_size: images per forward pass.
        results_path: write the detections here; with several settings, one file each, named
            ``STEM_boxesB_stepsS.SUFFIX``.
        progress: show a progress bar.

    Returns:
        One dict per setting on rank 0: ``boxes``, ``steps`` (the values used) and the metrics; None on
        the other ranks.

    Raises:
        InputError: an image cannot be read.
    """
    from diffdet.errors import BadImageError
    from diffdet.evaluation import build_evaluator, inference_on_dataset

    rows = []
    for knobs_ in settings:
        used = {
            "boxes": model.cfg.num_proposals if knobs_["num_boxes"] is None else knobs_["num_boxes"],
            "steps": model.cfg.sample_steps if knobs_["steps"] is None else knobs_["steps"],
        }
        target = results_path
        if results_path is not None and len(settings) > 1:
            suffix = f"_boxes{used['boxes']}_steps{used['steps']}{results_path.suffix}"
            target = results_path.with_name(results_path.stem + suffix)
        evaluator = build_evaluator(dataset, target, crowdhuman_label=label)
        desc = f"eval {used['boxes']} boxes, {used['steps']} steps" if len(settings) > 1 else "eval"
        try:
            metrics = inference_on_dataset(
                model, dataset, evaluator, batch_size=batch_size, progress=progress and desc, **knobs_
            )
        except BadImageError as err:
            raise InputError(str(err)) from err
        rows.append(None if metrics is None else {**used, **metrics})
    return None if None in rows else rows


def eval_main(args: argparse.Namespace) -> int:
    """``diffdet eval``: prints the metrics table (rank 0); returns the exit status (2 on unusable input)."""
    from diffdet.data.crowdhuman import is_odgt
    from diffdet.engine.distributed import (
        init_distributed,
        launch_from_env,
        local_device,
        peer_failures_as_errors,
        shutdown,
    )

    check_results_files(args.data, {"--results": args.results, "--metrics-out": args.metrics_out})
    crowdhuman, grouped = is_odgt(args.data), False
    try:
        if args.class_name is not None and not crowdhuman:
            raise InputError("--class applies to CrowdHuman (.odgt) evaluation only")
        dataset = evaluation_dataset(args.data, args.images, args.max_images, args.crowdhuman_box)
        runs = settings(args, sweep=crowdhuman)
        if dataset.is_lvis:
            _require_lvis()
        launch_from_env()  # under srun: torchrun's variables from SLURM's
        device = local_device(pick_device(args.device))
        model = load_detector(args.weights, device, runtime=args.runtime, dtype=dtype(args.dtype))
        dataset.check_resizable(model.cfg.min_size_test, model.cfg.max_size_test)
        label = class_label(model, args.class_name) if crowdhuman else 0
        if not crowdhuman:
            check_categories(model, dataset)
        model = wrap_tta(model, args, len(dataset) * len(runs), progress=not args.no_progress)
        grouped = init_distributed(device, timeout_s=EVAL_DIST_TIMEOUT_S)
        with peer_failures_as_errors(EVAL_DIST_TIMEOUT_S):  # a dead peer: one line, not a hang
            rows = run_eval(
                model, dataset, runs, label=label, batch_size=args.batch_size,
                progress=not args.no_progress, results_path=Path(args.results) if args.results else None,
            )  # fmt: skip
    finally:  # InputError: one line and exit status 2 in diffdet.cli.failure
        if grouped:
            shutdown()
    if rows is None:  # not rank 0
        return 0
    if crowdhuman:
        print(
            f"CrowdHuman ({args.crowdhuman_box}) over {len(dataset)} image(s) of {args.data}, "
            f"class {model.class_names[label]!r} of the weights:"
        )
        print(format_rows(rows))
        report: object = rows
    else:
        report = {k: v for k, v in rows[0].items() if k not in ("boxes", "steps")}
        print(f"{'LVIS' if dataset.is_lvis else 'COCO'} box AP over {len(dataset)} image(s) of {args.data}:")
        print(format_metrics(report))
    if args.metrics_out:
        write_text_atomic(args.metrics_out, json.dumps(report, indent=2))
    return 0


def _require_lvis() -> None:
    """Fail before inference, not after it, when the LVIS API is missing."""
    from diffdet.evaluation.lvis import require_lvis

    try:
        require_lvis()
    except ImportError as err:
        raise InputError(str(err)) from err
