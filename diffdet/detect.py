"""The ``diffdet detect`` and ``diffdet eval`` commands: run a detector on images, or score it on COCO.

``detect`` reads an image or a folder of images, writes each image with its boxes, class names and
scores drawn, and one COCO-results JSON (``detections.json``). ``eval`` runs the detector over a
COCO-format dataset and prints the pycocotools AP table (over CrowdHuman ``.odgt`` data, the
CrowdHuman metrics: :mod:`diffdet.crowdhuman_cli`). Both show a progress bar, and stop with a
one-line error (exit status 2) naming the file when an input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the data stack load on first use, so ``diffdet --help`` stays fast
    import torch
    from PIL import Image
    from torch import nn

    from diffdet.data.coco import CocoDetection

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""``--dtype`` names -> torch dtype names (torch is imported on first use)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
USAGE_ERROR = 2


class InputError(ValueError):
    """An input (image, folder, annotation file, weights) that cannot be used; the message names it."""


def pick_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name as given.

    Raises:
        InputError: a CUDA device is asked for but none is available.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available")
    return device


def load_detector(weights: str, device: torch.device, **overrides: object) -> nn.Module:
    """``diffdet.load(weights)`` on ``device`` in eval mode, with load errors turned into InputError."""
    from diffdet.checkpoint import load

    try:
        return load(weights, device=device, **overrides)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"--weights {weights}: {err}") from err


def list_images(path: str | Path) -> list[Path]:
    """The image files ``path`` names: itself, or the images directly in a folder, sorted by name.

    Raises:
        InputError: ``path`` does not exist, or a folder holds no image (suffixes in IMAGE_SUFFIXES).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{path}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_ids(files: list[Path]) -> list[int]:
    """COCO image ids for files: the number in each stem when all stems are distinct integers (COCO's
    ``000000000009.jpg`` is image 9), else 0..N-1 in the given order."""
    stems = [p.stem for p in files]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(files)))


def _as_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 [3, H, W] tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def run_detect(
    model: nn.Module,
    files: list[Path],
    out_dir: Path,
    *,
    score_thr: float,
    progress: bool = True,
    **inference_kwargs: object,
) -> Path:
    """Detect objects in ``files``; write annotated images and ``detections.json`` under ``out_dir``.

    Args:
        model: a detector in eval mode with ``class_names`` and ``category_ids``.
        files: image files (any Pillow format; EXIF orientation applied, converted to RGB).
        out_dir: output folder (created); annotated images keep their file names (as PNG when the
            input is not JPEG or PNG).
        score_thr: keep detections with score >= this (in the pictures and the JSON).
        progress: show a progress bar.
        **inference_kwargs: per-call knobs for the model (``num_boxes``, ``steps``, ``seed``...).

    Returns:
        Path of the COCO-results JSON: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h]
        (original-image pixels), "score"}``; image ids from :func:`image_ids`.

    Raises:
        InputError: an image cannot be decoded (the message names the file).
    """
    from tqdm import tqdm

    from diffdet.data.coco import BadImageError, read_image
    from diffdet.evaluate import to_coco_results
    from diffdet.visualize import draw_detections

    out_dir.mkdir(parents=True, exist_ok=True)
    device = model.pixel_mean.device
    results = []
    for file, image_id in tqdm(
        list(zip(files, image_ids(files), strict=True)), desc="detect", unit="img", disable=not progress
    ):
        try:
            image = read_image(str(file))
        except BadImageError as err:
            raise InputError(str(err)) from err
        output = model([_as_tensor(image).to(device)], **inference_kwargs)[0]
        keep = output["scores"] >= score_thr
        output = {k: v[keep].cpu() for k, v in output.items()}
        results.extend(to_coco_results(image_id, output, list(model.category_ids)))
        name = file.name if file.suffix.lower() in (".jpg", ".jpeg", ".png") else file.stem + ".png"
        draw_detections(image, output, model.class_names, score_threshold=score_thr).save(out_dir / name)
    path = out_dir / "detections.json"
    path.write_text(json.dumps(results))
    return path


class ModelWrapper:
    """A stand-in for a detector: it offers what :func:`diffdet.evaluate.evaluate` uses of a model
    (``training``, ``eval``, ``train`` and the call) and passes mode changes to the wrapped model.
    Subclasses define the call."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self) -> ModelWrapper:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> ModelWrapper:
        self.model.train(mode)
        return self


class _Progress(ModelWrapper):
    """A detector whose every call advances a progress bar by its number of images."""

    def __init__(self, model: nn.Module, bar) -> None:
        super().__init__(model)
        self.bar = bar

    def __call__(self, images: list[torch.Tensor], **kwargs: object) -> list[dict[str, torch.Tensor]]:
        out = self.model(images, **kwargs)
        self.bar.update(len(images))
        return out


def coco_dataset(annotations: str | Path, images: str | Path | None, max_images: int = 0) -> CocoDetection:
    """A COCO-format dataset; without ``images`` the COCO layout is assumed:
    ``root/annotations/instances_NAME.json`` -> images in ``root/NAME``, and for LVIS files
    detectron2's: ``datasets/lvis/lvis_v1_val.json`` -> the COCO root ``datasets/coco``.

    Raises:
        InputError: the annotation file is missing or malformed, or the image folder does not exist.
    """
    from diffdet.data.coco import BadAnnotationError, CocoDetection

    annotations = Path(annotations)
    if not annotations.is_file():
        raise InputError(f"annotation file {annotations} does not exist")
    if images is None and annotations.stem.startswith("lvis"):
        images = annotations.parent.parent / "coco"  # LVIS images: COCO's train2017/ and val2017/
    elif images is None:
        images = annotations.parent.parent / annotations.stem.removeprefix("instances_")
    if not Path(images).is_dir():
        raise InputError(f"image folder {images} does not exist (pass --images)")
    try:
        return CocoDetection(images, annotations, max_images=max_images)
    except (FileNotFoundError, BadAnnotationError) as err:
        raise InputError(str(err)) from err


def run_eval(
    model: nn.Module, dataset: CocoDetection, *, batch_size: int = 1, results_path: Path | None = None,
    progress: bool = True, **inference_kwargs: object,
) -> dict[str, float]:  # fmt: skip
    """COCO box AP of ``model`` on ``dataset`` (see :func:`diffdet.evaluate.evaluate`), with a progress bar.

    Raises:
        InputError: the model's categories are not the dataset's, or an image cannot be read.
    """
    from tqdm import tqdm

    from diffdet.data.coco import BadImageError
    from diffdet.evaluate import evaluate

    if tuple(model.category_ids) != tuple(dataset.category_ids):
        raise InputError(
            f"the weights detect {len(model.category_ids)} categories (ids {list(model.category_ids)[:5]}..."
            f"), the dataset has {len(dataset.category_ids)} (ids {list(dataset.category_ids)[:5]}...)"
        )
    device = model.pixel_mean.device
    with tqdm(total=len(dataset), desc="eval", unit="img", disable=not progress) as bar:
        try:
            metrics = evaluate(
                _Progress(model, bar), dataset, device, batch_size=batch_size, results_path=results_path,
                **inference_kwargs,
            )  # fmt: skip
        except BadImageError as err:
            raise InputError(str(err)) from err
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """The AP table: one row of names, one of values in percent (-1 where a size or group has no GT)."""
    names = "".join(f"{m:>8}" for m in metrics)
    values = "".join(f"{100 * v:>8.2f}" if v >= 0 else f"{-1:>8}" for v in metrics.values())
    return f"{names}\n{values}"


def _inference_args(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """The model and inference options; ``several``: --boxes and --steps take comma-separated lists
    (a sweep, written as ``diffdet bench`` writes its grid)."""
    if several:
        from diffdet.benchmark.cli import _ints as kind

        sweep = "; a comma-separated list sweeps CrowdHuman evaluation"
    else:
        kind, sweep = int, ""
    parser.add_argument("--weights", required=True, help="checkpoint file or preset name (see diffdet.load)")
    parser.add_argument("--boxes", type=kind, help=f"boxes per image (default: the model's){sweep}")
    parser.add_argument("--steps", type=kind, help=f"DDIM sampling steps (default: the model's){sweep}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's random boxes")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda when available)"
    )
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default="fp32",
        help="weights' dtype: bf16 runs backbone, FPN and head in bfloat16 (boxes, sampler and NMS "
        "stay float32; fast on CPUs with AMX or AVX512-BF16, and on GPUs) (default fp32)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def detect_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet detect``."""
    parser.add_argument("input", metavar="IMAGE_OR_DIR", help="an image, or a folder of images")
    _inference_args(parser)
    parser.add_argument("--score-thr", type=float, default=0.5, help="minimum score kept (default 0.5)")
    parser.add_argument("--out", default="detections", help="output folder (default ./detections)")


def eval_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffdet eval``."""
    parser.add_argument(
        "--data", required=True, metavar="JSON", help="COCO or LVIS JSON, or CrowdHuman .odgt annotations"
    )
    parser.add_argument(
        "--images", default=None, help="image folder (default: COCO layout, or Images/ beside a .odgt file)"
    )
    _inference_args(parser, several=True)
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


def _one(value: int | list[int] | None, flag: str) -> int | None:
    """A single --boxes / --steps value (eval parses lists, and only CrowdHuman evaluation sweeps)."""
    if not isinstance(value, list):
        return value
    if not value:
        return None
    if len(value) > 1:
        raise InputError(
            f"{flag} takes one value here (several values sweep CrowdHuman .odgt evaluation only)"
        )
    return value[0]


def _dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, DTYPES[name])


def _knobs(args: argparse.Namespace) -> dict[str, object]:
    return {"num_boxes": _one(args.boxes, "--boxes"), "steps": _one(args.steps, "--steps"), "seed": args.seed}


def detect_main(args: argparse.Namespace) -> int:
    """``diffdet detect``: returns the exit status (2 with a message on an unusable input)."""
    try:
        files = list_images(args.input)
        model = load_detector(args.weights, pick_device(args.device), dtype=_dtype(args.dtype))
        path = run_detect(
            model,
            files,
            Path(args.out),
            score_thr=args.score_thr,
            progress=not args.no_progress,
            **_knobs(args),
        )
    except InputError as err:
        print(f"diffdet detect: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(f"{len(files)} image(s) annotated in {args.out}; COCO results in {path}")
    return 0


def _require_lvis() -> None:
    """Fail before inference, not after it, when the LVIS API is missing."""
    from diffdet.evaluate_lvis import require_lvis

    try:
        require_lvis()
    except ImportError as err:
        raise InputError(str(err)) from err


def eval_main(args: argparse.Namespace) -> int:
    """``diffdet eval``: prints the AP table; returns the exit status (2 on an unusable input)."""
    if Path(args.data).suffix.lower() == ".odgt":
        from diffdet.crowdhuman_cli import eval_crowdhuman_main

        return eval_crowdhuman_main(args)
    try:
        if args.class_name is not None:
            raise InputError("--class applies to CrowdHuman (.odgt) evaluation only")
        dataset = coco_dataset(args.data, args.images, args.max_images)
        if dataset.is_lvis:
            _require_lvis()
        model = load_detector(args.weights, pick_device(args.device), dtype=_dtype(args.dtype))
        metrics = run_eval(
            model, dataset, batch_size=args.batch_size, progress=not args.no_progress,
            results_path=Path(args.results) if args.results else None, **_knobs(args),
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
