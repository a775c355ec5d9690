"""Overfit the first 16 images of coco128 and check the training loop reaches AP50 >= 0.8 on them.

Real COCO annotations (80 categories with their non-contiguous ids, crowd boxes, varied image sizes)
go through the whole loop: loader, transforms (one small resolution, no flip), matcher, criterion,
trainer, and pycocotools evaluation on the same 16 images (every quarter of the run, into
metrics.jsonl). A small detector (R18 at half width, the quickstart's head) trains from scratch:
about 0.8 s per iteration on 2 CPU cores.

    python benchmarks/overfit_coco128.py [--coco128 ../shared/data/coco128] [--iters 2000] [--device auto]

Writes ``benchmarks/results/overfit_coco128.json`` (AP table, iterations, wall time, device) and
exits 1 when AP50 < 0.8.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COCO128 = ROOT.parent / "shared" / "data" / "coco128"
TARGET_AP50 = 0.8


def overrides(coco128: Path, iters: int, device: str, output_dir: Path, images: int) -> list[str]:
    """Config overrides of the overfitting run."""
    ann = coco128 / "annotations" / "instances_train2017.json"
    return [
        "model.backbone=R18-half",
        "model.backbone_norm=BN",
        "model.freeze_at=0",
        "model.num_classes=80",
        "model.num_proposals=100",
        "model.hidden_dim=64",
        "model.dim_feedforward=256",
        "model.nheads=4",
        "model.num_heads=3",
        "model.dim_dynamic=16",
        "model.min_size_test=256",
        "model.max_size_test=384",
        f"data.train_images={coco128 / 'train2017'}",
        f"data.train_annotations={ann}",
        f"data.val_images={coco128 / 'train2017'}",
        f"data.val_annotations={ann}",
        f"data.max_train_images={images}",
        f"data.max_val_images={images}",
        "data.min_size_train=[256]",
        "data.max_size_train=384",
        "data.flip_prob=0.0",
        "data.num_workers=0",
        "solver.ims_per_batch=4",
        "solver.base_lr=0.0005",
        "solver.warmup_iters=100",
        f"solver.steps=[{int(iters * 0.8)}]",
        f"solver.max_iter={iters}",
        "train.seed=0",
        f"train.device={device}",
        f"train.output_dir={output_dir}",
        f"train.checkpoint_period={iters}",
        f"train.eval_period={max(1, iters // 4)}",
        "test.batch_size=4",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco128", type=Path, default=DEFAULT_COCO128)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--output-dir", type=Path, default=ROOT / "output" / "overfit_coco128")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results" / "overfit_coco128.json"
    )
    args = parser.parse_args(argv)
    if not (args.coco128 / "annotations" / "instances_train2017.json").is_file():
        print(f"coco128 not found at {args.coco128}", file=sys.stderr)
        return 2

    import torch

    from diffdet.config import load_config
    from diffdet.train import run

    cfg = load_config(None, overrides(args.coco128, args.iters, args.device, args.output_dir, args.images))
    start = time.perf_counter()
    metrics = run(cfg)
    seconds = time.perf_counter() - start
    device = (
        "cuda:" + torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.device != "cpu"
        else "cpu"
    )
    record = {
        "benchmark": "overfit_coco128",
        "images": args.images,
        "iters": args.iters,
        "wall_s": round(seconds, 1),
        "device": device,
        "metrics": metrics,
        "target_ap50": TARGET_AP50,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0 if metrics and metrics["AP50"] >= TARGET_AP50 else 1


if __name__ == "__main__":
    sys.exit(main())
