"""``diffdet quickstart``: synthetic data → CPU training → COCO evaluation → a picture of detections.

Writes under ``--output-dir`` (default ``output/quickstart``): ``data/`` (the generated shapes
dataset), the checkpoints, ``metrics.jsonl``, ``config.yaml``, ``coco_results.json`` and
``detections.png`` (validation images with their detections) and ``diffdet_quickstart.pth`` (the
final detector, for ``diffdet.load``), then prints the box AP.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffdet.checkpoint.presets import weights_dir
from diffdet.config import load_config
from diffdet.data.coco import CocoDetection
from diffdet.data.synthetic import SyntheticSpec, generate
from diffdet.engine.state import checkpoint_name, read_checkpoint
from diffdet.visualize import draw_detections, save_grid

PICTURE_IMAGES = 8
# Every core: on a quiet 2-core machine (2026-11-25, quickstart model, batch 8) an iteration took
# 0.39 s with 2 threads and 0.68 s with 1. Pass --threads 1 when another job shares the cores: then
# 2 threads wait for each other and can be several times slower.
DEFAULT_THREADS = 0
PICTURE_SCORE_THRESHOLD = 0.5  # the trained quickstart model scores its detections 0.6-0.8
EXPORT_NAME = "diffdet_quickstart.pth"  # the file of the "quickstart" preset of diffdet.load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet quickstart``."""
    parser.add_argument("--output-dir", default="output/quickstart", help="where everything is written")
    parser.add_argument("--config", help="YAML config to use instead of the shipped quickstart preset")
    parser.add_argument(
        "--num-train", type=int, default=SyntheticSpec.num_train, help="synthetic training images"
    )
    parser.add_argument(
        "--num-val", type=int, default=SyntheticSpec.num_val, help="synthetic validation images"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="torch intra-op CPU threads (default 0: torch's default, one per core)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.max_iter=500"
    )


def _export(cfg, output_dir: Path) -> torch.nn.Module:
    """Write the final weights as ``diffdet_quickstart.pth`` (read by ``diffdet.load``); return the model."""
    from diffdet.checkpoint import save_checkpoint
    from diffdet.checkpoint.model_io import model_from_checkpoint

    final = read_checkpoint(output_dir / checkpoint_name(cfg.solver.max_iter, final=True))
    model = model_from_checkpoint(final)
    save_checkpoint(output_dir / EXPORT_NAME, model, model.cfg)  # the weights without the training state
    return model.eval()


def _picture(cfg, model: torch.nn.Module, val_set: CocoDetection, output_dir: Path) -> Path:
    """Draw ``model``'s detections (with the evaluation's ``test`` settings) on the first val images."""
    kwargs = {k: v for k, v in (("num_boxes", cfg.test.num_boxes), ("steps", cfg.test.steps)) if v}
    items = [val_set[i] for i in range(min(PICTURE_IMAGES, len(val_set)))]
    with torch.no_grad():
        outputs = model([item["image"] for item in items], **kwargs)
    pictures = [
        draw_detections(item["image"], out, val_set.class_names, PICTURE_SCORE_THRESHOLD)
        for item, out in zip(items, outputs, strict=True)
    ]
    return save_grid(pictures, output_dir / "detections.png")


def run(args: argparse.Namespace) -> int:
    """Run the quickstart; returns the exit status."""
    from diffdet.train import build_datasets
    from diffdet.train import run as train

    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    print(f"generating the synthetic shapes dataset in {output_dir / 'data'} ...")
    paths = generate(output_dir / "data", SyntheticSpec(num_train=args.num_train, num_val=args.num_val))
    if args.config:
        config_path = args.config
    else:
        from diffdet.configs import preset_path

        config_path = preset_path("quickstart")
    overrides = [f"data.{key}={value}" for key, value in paths.items()]
    overrides += [f"train.output_dir={output_dir}", *args.overrides]
    cfg = load_config(config_path, overrides)
    print(f"training on {cfg.train.device} for {cfg.solver.max_iter} iterations ...")
    metrics = train(cfg)
    _, val_set = build_datasets(cfg)
    model = _export(cfg, output_dir)
    picture = _picture(cfg, model, val_set, output_dir)
    minutes = (time.perf_counter() - start) / 60
    print(
        "COCO box AP on the synthetic val split: "
        + ", ".join(f"{k}={v:.3f}" for k, v in (metrics or {}).items())
    )
    print(f"detections drawn in {picture}; checkpoints and metrics.jsonl in {output_dir}")
    print(
        f"diffdet.load({str(output_dir / EXPORT_NAME)!r}) gives the detector; copy the file into "
        f"{weights_dir()} for diffdet.load('quickstart')"
    )
    print(f"quickstart took {minutes:.1f} min")
    return 0
