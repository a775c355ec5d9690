"""The detection calls the benchmark times: eager (any dtype, any op backend) and CUDA-graph replay.

The eager call runs the detector's public pieces in :meth:`DiffusionDet.detect`'s order
(``preprocess`` -> ``features`` -> ``draw_noise`` + ``sampler.sample`` over ``head`` -> ``finalize``),
with a clock mark between them, so one call gives both the end-to-end time and its breakdown:

- ``preprocess``: validation, resize, normalisation and padding;
- ``backbone+fpn``: the ResNet trunk and the FPN;
- ``head step i``: the 6-stage dynamic head at DDIM step i;
- ``sampler``: everything else in the sampling loop (noise draw, per-step top-k, fused DDIM update
  + box renewal);
- ``nms+postprocess``: class-aware NMS over the ensemble, scaling back to the original image.

The detections are those of ``model(images, num_boxes=P, steps=S, seed=seed)`` (a test checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffdet.bench.settings import MODES
from diffdet.bench.timing import Clock
from diffdet.modeling.box_ops import box_iou
from diffdet.modeling.cuda_graph import CudaGraphSampler
from diffdet.modeling.detector import DiffusionDet
from diffdet.modeling.sampler import draw_noise

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Detections = list[dict[str, Tensor]]


def mode_dtype(mode: str) -> torch.dtype:
    """The weights' dtype of a mode of :data:`MODES`."""
    return DTYPES[mode.removeprefix("graph").removeprefix("-") or "fp32"]


def check_modes(modes: Sequence[str], device: torch.device) -> list[str]:
    """Validate benchmark modes for a device.

    Raises:
        ValueError: an unknown mode, or a graph mode on a non-CUDA device.
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes must be among {MODES}, got {mode!r}")
        if mode.startswith("graph") and device.type != "cuda":
            raise ValueError(f"mode {mode!r} (CUDA graph) needs a CUDA device, got {device}")
    return list(modes)


def folded_copy(model: DiffusionDet, dtype: torch.dtype) -> DiffusionDet:
    """A copy of ``model`` for the fast modes, cast to ``dtype``, its inference fusions on and warm
    (FrozenBN folded, channels-last backbone; see :meth:`DiffusionDet.fuse_for_inference`)."""
    return copy.deepcopy(model).eval().to(dtype=dtype).fuse_for_inference()


def published_copy(model: DiffusionDet) -> DiffusionDet:
    """A float32 copy of ``model`` that runs its backbone as the published code does (NCHW, every
    FrozenBN an elementwise pass, no fused post-ops) under any backend: the baselines' model (the
    ``published`` baseline runs it under ``set_backend("published")``, which implies that layout and
    the published Swin attention as well)."""
    return copy.deepcopy(model).eval().float().fuse_for_inference(False)


@torch.no_grad()
def staged_detect(
    model: DiffusionDet, images: Sequence[Tensor], *, num_boxes: int, steps: int, seed: int, clock: Clock
) -> tuple[Detections, dict[str, float]]:
    """One detection through the model's public pieces, timed piece by piece.

    Args:
        model: the detector (eval mode).
        images: [3, H, W] RGB uint8 (or [0, 1] float) images.
        num_boxes: P.
        steps: S.
        seed: seed of the sampler's noise (a fresh generator, as ``model(..., seed=seed)``).
        clock: the device's clock.

    Returns:
        (detections as ``model(images, num_boxes=P, steps=S, seed=seed)``, milliseconds per component
        in the order of the module docstring, plus ``total``).
    """
    cfg = model.cfg
    nms_iou = cfg.nms_iou if cfg.use_nms else None
    start = clock.mark()
    batch = model.preprocess(images, resize=True)
    preprocessed = clock.mark()
    features = model.features(batch.tensor)
    backbone = clock.mark()
    device = batch.tensor.device
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = draw_noise(2 * steps - 1, len(images), num_boxes, device, generator)
    head_marks = []

    def head(boxes: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        before = clock.mark()
        out = model.head(features, boxes, t)
        head_marks.append((before, clock.mark()))
        return out

    candidates = model.sampler.sample(
        head, batch.image_whwh, noise=noise, steps=steps, renewal_threshold=cfg.renewal_threshold
    )
    sampled = clock.mark()
    detections = model.finalize(candidates, batch, nms_iou=nms_iou, max_detections=None)
    end = clock.mark()
    clock.sync()
    ms = clock.elapsed_ms
    heads = [ms(a, b) for a, b in head_marks]
    parts = {"preprocess": ms(start, preprocessed), "backbone+fpn": ms(preprocessed, backbone)}
    parts.update({f"head step {i + 1}": t for i, t in enumerate(heads)})
    parts["sampler"] = ms(backbone, sampled) - sum(heads)
    parts["nms+postprocess"] = ms(sampled, end)
    parts["total"] = ms(start, end)
    return detections, parts


def graph_runner(
    model: DiffusionDet, images: Sequence[Tensor], *, num_boxes: int, steps: int, seed: int
) -> Callable[[], Detections]:
    """Capture ``model``'s detection of this batch in a CUDA graph; return a call that replays it.

    Args:
        model: the detector on a CUDA device (with its inference fusions warm, see :func:`folded_copy`).
        images: the batch every replay detects (fixes the captured padded size).
        num_boxes: P.
        steps: S.
        seed: noise seed of every replay.

    Returns:
        A no-argument callable returning the detections.
    """
    padded = tuple(model.preprocess(images, resize=True).tensor.shape[-2:])
    sampler = CudaGraphSampler(
        model, batch_size=len(images), padded_size=padded, num_boxes=num_boxes, steps=steps
    )
    return lambda: sampler(images, seed=seed)


def compare_detections(fast: Detections, reference: Detections, match_iou: float = 0.95) -> dict[str, object]:
    """How far two runs' detections are apart (same images, same noise).

    Args:
        fast: the run under test, per image ``boxes``/``scores``/``labels``, by decreasing score.
        reference: the reference run, same layout.
        match_iou: IoU at which two boxes of the same label count as the same detection.

    Returns:
        ``same_count`` and ``same_labels`` (bool, rank by rank); ``max_box_diff`` (pixels) and
        ``max_score_diff`` over the common prefix of each image's ranked detections (0.0 when empty);
        ``matched``: the fraction of reference detections with a same-label fast detection at IoU >=
        ``match_iou`` (1.0 when the reference has none). Near-tied scores (random weights) may swap
        ranks without changing the set, which ``matched`` tolerates and the rank-wise fields do not.
    """
    same_count, same_labels, box_diff, score_diff = True, True, 0.0, 0.0
    found, total = 0, 0
    for a, b in zip(fast, reference, strict=True):
        n = min(len(a["scores"]), len(b["scores"]))
        same_count &= len(a["scores"]) == len(b["scores"])
        same_labels &= bool(torch.equal(a["labels"][:n].cpu(), b["labels"][:n].cpu()))
        if n:
            box_diff = max(box_diff, float((a["boxes"][:n].float() - b["boxes"][:n].float()).abs().max()))
            score_diff = max(
                score_diff, float((a["scores"][:n].float() - b["scores"][:n].float()).abs().max())
            )
        total += len(b["labels"])
        if len(a["labels"]) and len(b["labels"]):
            iou = box_iou(b["boxes"].float().cpu(), a["boxes"].float().cpu())  # [n_ref, n_fast]
            same = b["labels"].cpu()[:, None] == a["labels"].cpu()[None, :]
            found += int(((iou >= match_iou) & same).any(dim=1).sum())
    return {
        "same_count": same_count,
        "same_labels": same_labels,
        "max_box_diff": box_diff,
        "max_score_diff": score_diff,
        "matched": found / total if total else 1.0,
    }
