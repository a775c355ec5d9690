"""``diffdet export``: write a detector as a fixed-shape ONNX or ``.pt2`` graph (:mod:`diffdet.export`)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from diffdet.cli.options import image_size, load_detector
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
    parser.add_argument(
        "--quantize", choices=("int8",),
        help="write an int8 .onnx file: ONNX Runtime's dynamic quantization of the large matrix products "
        "(the head's); runs in onnxruntime",
    )  # fmt: skip
    parser.add_argument(
        "--check-data", metavar="JSON",
        help="with --quantize: COCO JSON on which the int8 file's AP50 must be within 0.01 of the fp32 "
        "file's, else it is not written",
    )  # fmt: skip
    parser.add_argument("--check-images", help="image folder of --check-data (default: COCO layout)")


def export_main(args: argparse.Namespace) -> int:
    """``diffdet export``: returns the exit status (unusable options raise InputError, one line and exit
    status 2 through :mod:`diffdet.cli.failure`). The file is written beside ``--out`` and renamed
    over it only when complete (and, with ``--check-data``, accepted), so a failed export leaves an
    earlier ``--out`` as it was."""
    import torch

    from diffdet.export import export
    from diffdet.export.runtime import is_exported

    out = Path(args.out)
    if args.quantize and (args.dtype != "fp32" or (args.format or out.suffix[1:]) != "onnx"):
        raise InputError("--quantize int8 writes an .onnx file from fp32 (give --out X.onnx, --dtype fp32)")
    if args.check_data and not args.quantize:
        raise InputError("--check-data checks a --quantize int8 file")
    if is_exported(args.weights):
        raise InputError(f"--weights {args.weights}: is an exported file already; export the checkpoint")
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder, not a file")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")
    model = load_detector(args.weights, torch.device("cpu"))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        written = Path(scratch) / f"export{out.suffix}"
        fp32 = Path(scratch) / "fp32.onnx" if args.quantize else written
        meta = export(
            model, fp32, format=args.format, size=args.size, num_boxes=args.boxes, steps=args.steps,
            batch=args.batch, dtype=args.dtype, opset=args.opset, max_detections=args.max_detections,
        )  # fmt: skip
        if args.quantize:
            meta = {**meta, "dtype": "int8", "bytes": quantize_checked(fp32, written, args)}
        os.replace(written, out)
    print(
        f"wrote {args.out}: {meta['format']}, {meta['batch']} x {meta['height']}x{meta['width']} uint8, "
        f"{meta['num_boxes']} boxes x {meta['steps']} step(s), {meta['dtype']}, "
        f"{meta['bytes'] / 1e6:.1f} MB in {meta['seconds']:.1f} s"
    )
    return 0


def quantize_checked(fp32: Path, out: Path, args: argparse.Namespace) -> int:
    """Quantize ``fp32`` into ``out`` (see :func:`diffdet.export.quantize.quantize_int8`); with
    ``--check-data``, print both files' AP50 there and refuse the int8 file when it loses more than
    0.01. Returns the int8 file's size in bytes.

    Raises:
        InputError: the int8 file loses too much AP50, or the check data is unusable.
    """
    from diffdet.export.quantize import check_int8, quantize_int8

    quantize_int8(fp32, out)
    if args.check_data:
        from diffdet.data.build import coco_dataset
        from diffdet.evaluation import build_evaluator, inference_on_dataset
        from diffdet.export.runtime import load_exported

        dataset = coco_dataset(args.check_data, args.check_images)
        ap50 = [
            inference_on_dataset(load_exported(f), dataset, build_evaluator(dataset), seed=0)["AP50"]
            for f in (fp32, out)
        ]
        print(f"AP50 on {args.check_data}: fp32 {ap50[0]:.4f}, int8 {ap50[1]:.4f}")
        check_int8(ap50[0], ap50[1], Path(args.out))  # a refused file is never renamed to --out
    return out.stat().st_size
