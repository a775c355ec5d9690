"""Same detections from an exported file as from the PyTorch model, on a trained detector.

Resizes a COCO-format validation set to one fixed size (the exported graph's input size; boxes
scaled with the images), exports the checkpoint at that size, runs ``diffdet eval --results`` on the
checkpoint and on the file in each runtime with the same seed, and reports per runtime the PyTorch
detections (score >= 0.05) without a match (same label, IoU >= 0.99, score within 1e-3) and both APs.

    python benchmarks/export_parity.py --weights output/quickstart/diffdet_quickstart.pth \
        --data output/quickstart/data/annotations/instances_val.json \
        --images output/quickstart/data/val --size 112x144 --boxes 100 --steps 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))
from test_export_same_detections import unmatched

import diffdet
from diffdet.cli import main


def resized_copy(data: Path, images: Path, size: tuple[int, int], out: Path) -> Path:
    """The dataset with every image resized to ``size`` (H, W) and its boxes scaled; returns the JSON."""
    coco = json.loads(data.read_text())
    (out / "images").mkdir(parents=True)
    scale = {}
    for image in coco["images"]:
        h, w = size
        scale[image["id"]] = (w / image["width"], h / image["height"])
        Image.open(images / image["file_name"]).convert("RGB").resize((w, h), Image.BILINEAR).save(
            out / "images" / Path(image["file_name"]).with_suffix(".png").name
        )
        image.update(width=w, height=h, file_name=Path(image["file_name"]).with_suffix(".png").name)
    for ann in coco["annotations"]:
        sx, sy = scale[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        ann["bbox"] = [x * sx, y * sy, bw * sx, bh * sy]
        ann["area"] = bw * sx * bh * sy
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def evaluate(data: Path, images: Path, weights: Path, out: Path, *extra: str) -> tuple[list[dict], dict]:
    """``diffdet eval --results --metrics-out`` quietly: (detections, metrics)."""
    results, metrics = out.with_suffix(".json"), out.with_suffix(".metrics.json")
    argv = [
        "eval", "--data", str(data), "--images", str(images), "--weights", str(weights), "--seed", "0",
        "--device", "cpu", "--no-progress", "--results", str(results), "--metrics-out", str(metrics), *extra,
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        if main(argv) != 0:
            sys.exit(err.getvalue())
    return json.loads(results.read_text()), json.loads(metrics.read_text())


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--size", default="112x144", help="HxW of the export and of the resized images")
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = resized_copy(args.data, args.images, size, root / "data")
        model = diffdet.load(str(args.weights))
        exported = root / "model.onnx"
        diffdet.export(model, exported, size=size, num_boxes=args.boxes, steps=args.steps)
        knobs = ("--boxes", str(args.boxes), "--steps", str(args.steps))
        images = root / "data" / "images"
        reference, reference_metrics = evaluate(data, images, args.weights, root / "torch", *knobs)
        print(f"PyTorch: {sum(r['score'] >= 0.05 for r in reference)} detections >= 0.05, "
              f"AP {reference_metrics['AP']:.4f}, AP50 {reference_metrics['AP50']:.4f}")  # fmt: skip
        for runtime in args.runtimes.split(","):
            dets, metrics = evaluate(data, images, exported, root / runtime, "--runtime", runtime)
            print(f"{runtime}: {len(unmatched(reference, dets))} unmatched, "
                  f"AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}")  # fmt: skip


if __name__ == "__main__":
    run()
