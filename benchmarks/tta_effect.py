"""What test-time augmentation buys and costs: COCO AP / AP50 and wall time with and without TTA.

Each setting evaluates the same images with the same weights, knobs and seed, one after the other in
one process, so the time ratios compare like with like (absolute times depend on the machine's load).
Settings: ``plain`` (no TTA); ``published`` and ``fast`` (:data:`diffdet.modeling.tta.PRESETS`, soft
vote); ``*-scaled`` (sizes, max size and scale ranges scaled by the model's test size / 800, for a
model trained on small images); ``*-nms`` (detectron2's merge instead of the soft vote).

    python benchmarks/tta_effect.py --weights output/quickstart/diffdet_quickstart.pth \\
        --data output/quickstart/data/annotations/instances_val.json --images output/quickstart/data/val \\
        --settings plain,fast-scaled,published-scaled --max-images 100

Adds one entry per setting and image count to ``benchmarks/results/tta_effect.json`` (AP table, wall
seconds, seconds per image, time ratio to ``plain`` on the same images, CPU and threads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tta_effect.json"
SETTINGS = (
    "plain", "fast", "fast-scaled", "published", "published-scaled", "published-scaled-nms", "published-nms",
)  # fmt: skip


def build(setting: str, model):
    """The model, or its TTA wrapper, for ``setting``."""
    from diffdet.modeling.tta import PRESETS, REFERENCE_SIZE, DiffusionDetWithTTA

    if setting == "plain":
        return model
    preset, *flags = setting.split("-")
    config = PRESETS[preset]
    if "nms" in flags:
        config = dataclasses.replace(config, merge="nms")
    if "scaled" in flags:
        config = config.scaled(model.cfg.min_size_test / REFERENCE_SIZE)
    return DiffusionDetWithTTA(model, config)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' commands are parsed with it by tests/test_cli_tta.py)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True, help="COCO annotations JSON")
    parser.add_argument("--images", required=True, help="image folder")
    parser.add_argument("--settings", default="plain,fast-scaled,published-scaled")
    parser.add_argument("--max-images", type=int, default=0, help="first N images (0: all)")
    parser.add_argument("--boxes", type=int, default=100, help="boxes per image (quickstart: 100)")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps (quickstart: 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    from diffdet.checkpoint import load
    from diffdet.data.build import coco_dataset
    from diffdet.evaluation import build_evaluator, inference_on_dataset

    torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {SETTINGS}")
    model = load(args.weights, device=torch.device("cpu"))
    dataset = coco_dataset(args.data, args.images, args.max_images)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    plain_s = None
    for setting in settings:
        detector = build(setting, model)
        start = time.perf_counter()
        metrics = inference_on_dataset(
            detector, dataset, build_evaluator(dataset), num_boxes=args.boxes, steps=args.steps, seed=0
        )
        wall = time.perf_counter() - start
        plain_s = wall if setting == "plain" else plain_s
        row = {
            "setting": setting,
            "images": len(dataset),
            "inputs_per_image": detector.inputs_per_image() if setting != "plain" else 1,
            "sizes": list(detector.config.sizes) if setting != "plain" else [model.cfg.min_size_test],
            "AP": round(metrics["AP"], 4),
            "AP50": round(metrics["AP50"], 4),
            "metrics": metrics,
            "wall_s": round(wall, 2),
            "s_per_image": round(wall / len(dataset), 4),
            "time_ratio_to_plain": round(wall / plain_s, 2) if plain_s else None,
            "weights": str(args.weights),
            "boxes": args.boxes,
            "steps": args.steps,
            "seed": 0,
            "cpu": cpu_name(),
            "threads": args.threads,
            "torch": torch.__version__,
        }
        print(
            json.dumps(
                {k: row[k] for k in ("setting", "images", "AP", "AP50", "wall_s", "time_ratio_to_plain")}
            )
        )
        rows = [r for r in rows if (r["setting"], r["images"]) != (setting, len(dataset))] + [row]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
