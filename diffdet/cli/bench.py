"""``diffdet bench``: the speed (and optionally accuracy) grid of a config or checkpoint.

Prints the table, writes ``NAME.json`` and ``NAME.png`` (FPS against boxes) under ``--out``, and with
``--data`` also ``NAME_ap.png`` (AP against FPS, the paper's Figure 3).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.bench.settings import BASELINES, DEFAULT_BOXES, DEFAULT_STEPS, MODES, RUNTIMES, GridSettings
from diffdet.cli.options import (
    RUNTIMES as ENGINES,
)
from diffdet.cli.options import (
    image_size,
    load_detector,
    non_negative_int,
    pick_device,
    positive_int,
    positive_ints,
    warn_if_bf16_is_emulated,
)
from diffdet.data.build import coco_dataset
from diffdet.errors import InputError

if TYPE_CHECKING:  # the parser is built without importing torch (``diffdet --help`` stays fast)
    import torch
    from tqdm import tqdm

    from diffdet.modeling.detector import DiffusionDet


def _advance(bar: tqdm) -> Callable[[str], None]:
    """A progress callback: each call completes the previous step and names the one starting."""
    started = False

    def progress(text: str) -> None:
        nonlocal started
        bar.update(int(started))
        started = True
        bar.set_postfix_str(text)

    return progress


def bench_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet bench``."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--weights", help="checkpoint file or preset (default: random weights of --config)")
    src.add_argument("--config", help="YAML config (its model section); default: the R50 COCO model")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.backbone=R18"
    )
    parser.add_argument(
        "--boxes",
        type=positive_ints,
        default=list(DEFAULT_BOXES),
        help="num_boxes grid (default %(default)s)",
    )
    parser.add_argument(
        "--steps", type=positive_ints, default=list(DEFAULT_STEPS), help="steps grid (default %(default)s)"
    )
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=None,
        help=f"fast modes among {','.join(MODES)} (default: fp32,bf16,graph on CUDA, fp32,bf16 on CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16", "fp16"), default=None,
        help="measure this dtype's eager mode only (the same as --modes DTYPE)",
    )  # fmt: skip
    parser.add_argument(
        "--baselines", type=lambda s: [b for b in s.split(",") if b], default=["reference"],
        help=f"op backends to compare with, among {','.join(BASELINES)} (default reference; "
        "published: the published computation, see docs/backends.md); '' for none",
    )  # fmt: skip
    parser.add_argument(
        "--runtime", choices=ENGINES, default=None,
        help="engine of an exported --weights file (default: onnxruntime for .onnx, torch for .pt2)",
    )  # fmt: skip
    parser.add_argument(
        "--runtimes", type=lambda s: [r for r in s.split(",") if r], default=[],
        help=f"also export the model at each point and time it in these runtimes, among "
        f"{','.join(RUNTIMES)} (eager: the fp32 mode; int8: ONNX Runtime on a dynamically quantized file)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=positive_ints, default=[1], help="images per call; a list measures each (e.g. 1,4)"
    )
    parser.add_argument(
        "--size", type=image_size, default=(800, 1333), help="input HxW; also the test resize (800x1333)"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, default=3, help="untimed calls per point (default 3)"
    )
    parser.add_argument("--iters", type=positive_int, default=10, help="timed calls per point (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and the sampler's noise")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda when available)"
    )
    parser.add_argument(
        "--threads", type=non_negative_int, default=0,
        help="CPU threads for torch and the exported runtimes (0: torch's default)",
    )  # fmt: skip
    parser.add_argument("--data", metavar="JSON", help="COCO instances JSON: also measure AP at every point")
    parser.add_argument("--images", help="image folder of --data (default: COCO layout beside the JSON)")
    parser.add_argument(
        "--max-images", type=non_negative_int, default=0, help="AP on the first N images only (0: all)"
    )
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default %(default)s)")
    parser.add_argument("--name", default=None, help="file stem of the outputs (default e2e-DEVICE-TIME)")


def prepare_model(args: argparse.Namespace, device: torch.device) -> DiffusionDet:
    """The fp32 detector to benchmark, in eval mode on ``device``, its test resize set to ``--size``.

    Raises:
        InputError: the weights or config cannot be used.
    """
    size = {"min_size_test": min(args.size), "max_size_test": max(args.size)}
    if args.weights:
        if args.overrides:
            raise InputError("KEY=VALUE overrides apply to --config, not to --weights")
        return load_detector(args.weights, device, args.runtime, threads=args.threads or None, **size)
    from diffdet.config import load_config
    from diffdet.modeling.build import build_detector

    try:
        cfg = dataclasses.replace(load_config(args.config, args.overrides).model, **size)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"--config {args.config}: {err}") from err
    return build_detector(cfg).to(device).eval()


def box_ap(model: DiffusionDet, args: argparse.Namespace) -> Callable[[DiffusionDet, int, int], dict]:
    """The grid's AP measure: COCO (or LVIS) box AP of a variant of ``model`` on ``--data`` at P boxes
    and S steps, the sampler seeded with ``--seed``.

    Raises:
        InputError: the data cannot be read, or ``model`` does not detect its categories.
    """
    from diffdet.cli.eval import check_categories
    from diffdet.evaluation import build_evaluator, inference_on_dataset

    dataset = coco_dataset(args.data, args.images, args.max_images)
    check_categories(model, dataset)

    def ap(variant: DiffusionDet, boxes: int, steps: int) -> dict[str, float]:
        evaluator = build_evaluator(dataset)
        return inference_on_dataset(variant, dataset, evaluator, num_boxes=boxes, steps=steps, seed=args.seed)

    return ap


def bench_main(args: argparse.Namespace) -> int:
    """``diffdet bench``: returns the exit status (unusable arguments raise InputError: one line, exit 2)."""
    import torch
    from tqdm import tqdm

    from diffdet.bench.grid import check_exported_point, run_exported, run_grid
    from diffdet.bench.pipeline import check_modes, mode_dtype
    from diffdet.bench.report import (
        device_name,
        format_table,
        git_commit,
        plot_ap,
        plot_fps,
        write_json,
    )
    from diffdet.bench.runtimes import check_runtimes
    from diffdet.export.runtime import is_exported
    from diffdet.hardware import cpu_isa

    if Path(args.out).exists() and not Path(args.out).is_dir():  # found now, not after the measurements
        raise InputError(f"--out {args.out}: is a file, not a folder")
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data and not args.weights:
        raise InputError("--data needs --weights (AP of random weights means nothing)")
    model = prepare_model(args, device)
    exported = is_exported(args.weights or "")
    if exported and args.boxes == list(DEFAULT_BOXES) and args.steps == list(DEFAULT_STEPS):
        args.boxes, args.steps = [model.num_boxes], [model.steps]  # the file's point
    if args.dtype and args.modes:
        raise InputError("give --dtype or --modes, not both")
    default = ["fp32", "bf16", "graph"] if device.type == "cuda" else ["fp32", "bf16"]
    modes = [args.dtype] if args.dtype else args.modes or (["fp32"] if args.runtimes else default)
    if "eager" in args.runtimes and "fp32" not in modes:
        modes.append("fp32")
    if any(m in MODES and mode_dtype(m) == torch.bfloat16 for m in modes):
        warn_if_bf16_is_emulated(device, torch.bfloat16)
    try:  # the settings' own checks, before anything is measured
        grids = [
            GridSettings(
                boxes=args.boxes,
                steps=args.steps,
                modes=modes,
                batch=batch,
                size=args.size,
                warmup=args.warmup,
                iters=args.iters,
                baselines=args.baselines,
                seed=args.seed,
                runtimes=args.runtimes,
            )
            for batch in args.batch or [1]
        ]
        check_modes(modes, device)
        check_runtimes(args.runtimes)
        if exported:
            check_exported_point(model, grids[0])
    except ValueError as err:
        raise InputError(str(err)) from err
    if args.data:
        grids[0].ap_fn = box_ap(model, args)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-")
    name = args.name or f"e2e-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    calls = sum(len(g.boxes) * len(g.steps) * (1 + len(modes) * (g.ap_fn is not None)) for g in grids)
    records = []
    with tqdm(total=calls, desc="bench", unit="step") as bar:
        progress = _advance(bar)
        for settings in grids:
            records += run_exported(model, settings) if exported else run_grid(model, settings, progress)
        bar.update(1)  # the last step
    out = Path(args.out)
    dev = device_name(device)
    meta = {
        "device": dev,
        "isa": cpu_isa() if device.type == "cpu" else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "config": args.config,
        "weights": args.weights,
        "overrides": args.overrides,
        "size": list(args.size),
        "batch": args.batch,
        "warmup": args.warmup,
        "iters": args.iters,
        "modes": modes,
        "runtimes": args.runtimes,
        "threads": torch.get_num_threads(),
        "data": args.data,
        "backbone": getattr(model.cfg, "backbone", None),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(format_table(records, dev, meta["isa"]))
    written = [write_json(out / f"{name}.json", records, meta), plot_fps(records, out / f"{name}.png", dev)]
    if args.data:
        written.append(plot_ap(records, out / f"{name}_ap.png", dev))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
