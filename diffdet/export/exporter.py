"""``diffdet.export(model, path, ...)``: write a detector as an ONNX or ``.pt2`` graph of fixed shapes.

The file's contract (``format_version`` 1):

inputs
    ``images`` uint8 [N, 3, H, W] RGB at the export size (the model's resize and normalisation are
    inside the graph); ``noise`` float32 [2S - 1, N, P, 4], the layout and meaning of
    :func:`diffdet.modeling.sampler.draw_noise` (initial boxes, then per step the DDIM noise and the
    refill noise), so noise drawn from a seeded generator gives the PyTorch model's detections for it.
outputs
    ``boxes`` float32 [N, K, 4] xyxy in export-size pixels, ``scores`` float32 [N, K], ``labels``
    int64 [N, K], ``num_detections`` int64 [N]; per image the first ``num_detections`` rows are the
    detections by decreasing score, the rest zeros. K is ``max_detections`` (S * P when uncapped).
metadata
    a JSON object (see :mod:`diffdet.export.metadata`): the sizes and knobs baked in, the class names
    and dataset category ids.

Knobs fixed at export (a different value needs a new export): the size, batch, boxes, steps, dtype,
``renewal_threshold``, ``nms_iou`` and ``max_detections``. ``ensemble="reference"`` (the published
sampler's data-dependent random draws) cannot be expressed as a graph.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from diffdet import _extension
from diffdet.errors import InputError
from diffdet.export.graph import DetectorGraph, GraphSpec
from diffdet.export.metadata import FORMAT_VERSION, METADATA_KEY, PT2_EXTRA_FILE, format_of
from diffdet.modeling.backbone.conv import fold_frozen_batchnorm
from diffdet.modeling.detector import DiffusionDet
from diffdet.ops import _backend
from diffdet.optional import require

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
"""``dtype`` names of the graph's weights and activations (boxes and sampler stay float32)."""
MIN_OPSET = 18
"""RoiAlign's half_pixel mode needs 16; the translations are written against opset 18."""
INPUT_NAMES = ("images", "noise")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")


def export(
    model: DiffusionDet,
    path: str | Path,
    *,
    format: str | None = None,
    size: tuple[int, int] | None = None,
    num_boxes: int | None = None,
    steps: int | None = None,
    batch: int = 1,
    dtype: str = "fp32",
    opset: int = MIN_OPSET,
    renewal_threshold: float | None = None,
    nms_iou: float | None = None,
    max_detections: int | None = None,
    ensemble: str = "all",
) -> dict:
    """Export ``model`` as a fixed-shape detection graph (see the module doc for the file contract).

    The model is left untouched (a CPU copy is exported, its FrozenBatchNorms folded).

    Args:
        model: a DiffusionDet (any device, any mode).
        path: the file to write; its suffix (.onnx or .pt2) gives the format unless ``format`` does.
        format: "onnx" or "pt2".
        size: (H, W) of the input images; default (min_size_test, max_size_test) of the model.
        num_boxes: P (default: the model's ``num_proposals``).
        steps: S (default: the model's ``sample_steps``).
        batch: N, images per call.
        dtype: "fp32" or "fp16" (weights and activations; boxes, sampler and NMS stay float32).
        opset: ONNX opset (>= 18); ignored for .pt2.
        renewal_threshold: box renewal threshold (default: the model's).
        nms_iou: NMS IoU threshold (default: the model's; no NMS when the model's ``use_nms`` is False).
        max_detections: K, detections per image (default: S * P, all of them, as the model).
        ensemble: "all" only (see the module doc).

    Returns:
        The metadata written (a dict), with ``seconds`` (export wall time) and ``bytes`` (file size).

    Raises:
        InputError: an option the graph cannot express or a value out of range (the message names it).
    """
    path = Path(path)
    fmt = _check_format(format, path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    spec = _spec(model, size, num_boxes, steps, batch, renewal_threshold, nms_iou, max_detections, ensemble)
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if fmt == "onnx" and (not isinstance(opset, int) or opset < MIN_OPSET):
        raise InputError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    _check_ops()
    meta = _metadata(model, spec, fmt, dtype, opset)
    start = time.perf_counter()
    graph = DetectorGraph(_export_copy(model, DTYPES[dtype]), spec).eval()
    images = torch.zeros((spec.batch, 3, spec.height, spec.width), dtype=torch.uint8)
    noise = torch.zeros((2 * spec.steps - 1, spec.batch, spec.num_boxes, 4))
    with torch.no_grad():
        program = torch.export.export(graph, (images, noise), strict=False)
    text = json.dumps(meta)
    with _atomic_path(path) as tmp:
        if fmt == "pt2":
            torch.export.save(program, tmp, extra_files={PT2_EXTRA_FILE: text})
        else:
            _write_onnx(program, (images, noise), tmp, opset, text)
    return {**meta, "seconds": time.perf_counter() - start, "bytes": path.stat().st_size}


def _check_ops() -> None:
    """The graph records the compiled CPU ops (RoIAlign, NMS) through their fake kernels; the plain
    references have data-dependent shapes, so a forced backend cannot be traced.

    Raises:
        InputError: ``DIFFDET_BACKEND`` is set.
        RuntimeError: the compiled ops are not built (``diffdet._C``).
    """
    forced = _backend.forced_backend()
    if forced is not None:
        raise InputError(f"DIFFDET_BACKEND={forced}: unset it to export (the graph holds the compiled ops)")
    for op in ("roi_align_multilevel", "batched_nms"):
        if not _extension.has_kernel(op, "cpu"):
            reason = _extension.load_error() or "built without a CPU kernel"
            raise RuntimeError(f"export needs the compiled op diffdet::{op} (diffdet._C): {reason}")


def _check_format(fmt: str | None, path: Path) -> str:
    if fmt is None:
        return format_of(path)
    if fmt not in ("onnx", "pt2"):
        raise InputError(f"format must be onnx or pt2, got {fmt!r}")
    return fmt


def _spec(
    model: DiffusionDet,
    size: tuple[int, int] | None,
    num_boxes: int | None,
    steps: int | None,
    batch: int,
    renewal_threshold: float | None,
    nms_iou: float | None,
    max_detections: int | None,
    ensemble: str,
) -> GraphSpec:
    """Validate the options against the model and fill the defaults."""
    cfg = model.cfg
    if ensemble != "all":
        raise InputError(
            f"ensemble={ensemble!r} cannot be exported: its random draws depend on the detections "
            "(export ensembles every step, ensemble='all')"
        )
    height, width = size if size is not None else (cfg.min_size_test, cfg.max_size_test)
    if not (isinstance(height, int) and isinstance(width, int) and height >= 1 and width >= 1):
        raise InputError(f"size must be two positive integers HxW, got {size!r}")
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be an integer >= 1, got {batch!r}")
    try:
        num_boxes, steps, renewal_threshold, nms_iou = model.resolve_knobs(
            num_boxes, steps, renewal_threshold, nms_iou, max_detections, ensemble
        )
    except ValueError as err:
        raise InputError(str(err)) from err
    if num_boxes < 1:
        raise InputError(f"num_boxes must be >= 1 to export, got {num_boxes}")
    candidates = steps * num_boxes
    if max_detections is None:
        max_detections = candidates
    if not 1 <= max_detections <= candidates:
        raise InputError(
            f"max_detections must be in [1, steps * num_boxes = {candidates}], got {max_detections}"
        )
    return GraphSpec(height, width, batch, num_boxes, steps, renewal_threshold, nms_iou, max_detections)


def _metadata(model: DiffusionDet, spec: GraphSpec, fmt: str, dtype: str, opset: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "torch_version": torch.__version__,
        "opset": opset if fmt == "onnx" else None,
        "height": spec.height,
        "width": spec.width,
        "batch": spec.batch,
        "num_boxes": spec.num_boxes,
        "steps": spec.steps,
        "dtype": dtype,
        "max_detections": spec.max_detections,
        "renewal_threshold": spec.renewal_threshold,
        "nms_iou": spec.nms_iou,
        "ensemble": "all",
        "score_threshold": None,
        "num_classes": model.cfg.num_classes,
        "class_names": list(model.class_names),
        "category_ids": list(model.category_ids),
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
    }


def _export_copy(model: DiffusionDet, dtype: torch.dtype) -> DiffusionDet:
    """A CPU copy in eval mode with its FrozenBatchNorms folded into the convolutions and the other
    inference fusions off (the oneDNN post-ops are private ops no exporter knows)."""
    clone = copy.deepcopy(model).cpu().eval().to(dtype)
    fold_frozen_batchnorm(clone)
    return clone.fuse_for_inference(False)


def _write_onnx(
    program: torch.export.ExportedProgram, args: tuple, path: Path, opset: int, metadata: str
) -> None:
    """Translate to ONNX (custom ops -> standard operators), attach the metadata, check, save."""
    onnx = require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnxscript", "ONNX export")
    from diffdet.export.onnx_ops import translations

    onnx_program = torch.onnx.export(
        program,
        args,
        dynamo=True,
        custom_translation_table=translations(),
        opset_version=opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        optimize=False,  # the default optimizer's pattern rewrites take minutes on a detector
        verbose=False,
    )
    _simplify(onnx_program.model)
    model = onnx_program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _simplify(model) -> None:
    """Fold constants (shape arithmetic, casts of constants), share equal initializers and remove
    common subexpressions and dead nodes: about half the nodes go, in about a second for a tiny
    detector (onnxscript's full optimizer adds pattern rewrites whose matching takes minutes)."""
    import onnx_ir.passes.common as common
    from onnx_ir.passes import Sequential
    from onnxscript.optimizer import fold_constants_ir

    fold_constants_ir(model, onnx_shape_inference=True)
    Sequential(
        common.RemoveUnusedNodesPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
    )(model)


class _atomic_path:
    """A temporary path beside ``path``, renamed onto it when the block succeeds, removed otherwise."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=self.path.suffix
        )
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
