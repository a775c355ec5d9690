"""``diffdet export``: write a detector as a fixed-shape ONNX or ``.pt2`` graph (:mod:`diffdet.export`)."""

from __future__ import annotations

import argparse
import sys

from diffdet.cli.options import USAGE_ERROR, image_size, load_detector
from diffdet.errors import InputError


def export_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet export``."""
    parser.add_argument("--weights", required=True, help="checkpoint file or preset name (see diffdet.load)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write (.onnx or .pt2)")
    parser.add_argument(
        "--format", choices=("onnx", "pt2"), help="file format (default: from the suffix of --out)"
    )
    parser.add_argument(
        "--size", type=image_size, metavar="HxW",
        help="input image size, fixed in the graph (default: the model's test size, e.g. 800x1333)",
    )  # fmt: skip
    parser.add_argument("--boxes", type=int, help="boxes per image (default: the model's)")
    parser.add_argument("--steps", type=int, help="DDIM sampling steps (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument(
        "--dtype", choices=("fp32", "fp16"), default="fp32",
        help="weights and activations (boxes, sampler and NMS stay float32) (default fp32)",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default 18)")
    parser.add_argument(
        "--max-detections", type=int, help="detections per image (default: boxes x steps, all of them)"
    )


def export_main(args: argparse.Namespace) -> int:
    """``diffdet export``: returns the exit status (2 with a one-line message on an unusable option)."""
    import torch

    from diffdet.export import export

    try:
        model = load_detector(args.weights, torch.device("cpu"))
        meta = export(
            model, args.out, format=args.format, size=args.size, num_boxes=args.boxes, steps=args.steps,
            batch=args.batch, dtype=args.dtype, opset=args.opset, max_detections=args.max_detections,
        )  # fmt: skip
    except InputError as err:
        print(f"diffdet export: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(
        f"wrote {args.out}: {meta['format']}, {meta['batch']} x {meta['height']}x{meta['width']} uint8, "
        f"{meta['num_boxes']} boxes x {meta['steps']} step(s), {meta['dtype']}, "
        f"{meta['bytes'] / 1e6:.1f} MB in {meta['seconds']:.1f} s"
    )
    return 0
