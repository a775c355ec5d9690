"""``DetectorGraph``: a detector's whole detection as one fixed-shape module (what gets exported).

``DetectorGraph(model, spec)(images, noise)`` maps a uint8 batch of the export size and the sampler's
noise to padded detections, with no data-dependent shape and no host sync:

1. preprocessing: the model's test-time resize to a fixed size (skipped when the export size is
   already the model's size), normalisation, zero padding to the size divisibility;
2. :meth:`DiffusionDet.sample_fixed`: backbone + FPN, then the fast DDIM sampler (renewal per image
   and the ensemble over steps as masks over fixed sizes), the code the CUDA-graph sampler captures;
3. class-aware NMS per image (:func:`diffdet.ops.batched_nms_padded`, fixed-size result), the
   ``max_detections`` cap, boxes scaled back to export-size pixels, clipped, empty boxes dropped and
   the survivors packed first.

Its detections equal ``model(images, num_boxes=P, steps=S, generator=g)`` when ``noise`` is
``draw_noise(2S - 1, N, P, ...)`` drawn from ``g`` (see :mod:`diffdet.modeling.sampler`), up to float
rounding and the order of equal scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdet.modeling.detector import DiffusionDet
from diffdet.modeling.preprocess import postprocess_boxes, resized_shape
from diffdet.modeling.sampler import Candidates
from diffdet.ops import batched_nms_padded


@dataclass(frozen=True)
class GraphSpec:
    """The fixed sizes and knobs baked into an exported graph.

    Attributes:
        height, width: export size of the input images (pixels).
        batch: images per call N.
        num_boxes: P, boxes sampled per image.
        steps: S, DDIM steps.
        renewal_threshold: box renewal threshold.
        nms_iou: class-aware NMS IoU, or None for no NMS (the model's ``use_nms`` False).
        max_detections: K, detections per image (rows of the outputs).
    """

    height: int
    width: int
    batch: int
    num_boxes: int
    steps: int
    renewal_threshold: float
    nms_iou: float | None
    max_detections: int


class DetectorGraph(nn.Module):
    """Fixed-shape detection: (images, noise) -> (boxes, scores, labels, num_detections).

    Args:
        model: the detector, in eval mode (its FrozenBatchNorms may be folded; the inference
            fusions must be off: the oneDNN post-ops are not exportable).
        spec: sizes and knobs.
    """

    def __init__(self, model: DiffusionDet, spec: GraphSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        cfg = model.cfg
        self.resized = resized_shape(spec.height, spec.width, cfg.min_size_test, cfg.max_size_test)
        divisor = max(cfg.size_divisibility, model.backbone.size_divisibility)
        h, w = self.resized
        self.padded = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
        model.sampler.time_pairs(spec.steps)  # computed eagerly now: tracing cannot read tensors back
        self.register_buffer(
            "image_whwh", torch.tensor([[w, h, w, h]] * spec.batch, dtype=torch.float32), persistent=False
        )

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [N, 3, H, W] -> normalised, padded [N, 3, Hp, Wp] in the model's dtype.

        A resize runs on the uint8 images, as the model does on the CPU (PIL's rounding).
        """
        x = images
        if self.resized != (self.spec.height, self.spec.width):
            x = F.interpolate(x, size=self.resized, mode="bilinear", antialias=True, align_corners=False)
        x = (x.float() - self.model.pixel_mean) / self.model.pixel_std
        (h, w), (hp, wp) = self.resized, self.padded
        x = F.pad(x, (0, wp - w, 0, hp - h))
        return x.to(self.model.head.time_mlp[1].weight.dtype)

    def forward(self, images: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detect.

        Args:
            images (Tensor[N, 3, H, W]): uint8 RGB at the export size.
            noise (Tensor[2S - 1, N, P, 4]): float32, the layout of :func:`draw_noise`.

        Returns:
            boxes [N, K, 4] float32 xyxy export-size pixels, scores [N, K] float32, labels [N, K]
            int64, num_detections [N] int64; per image the first num_detections rows are the
            detections by decreasing score, the rest zeros.
        """
        spec = self.spec
        candidates = self.model.sample_fixed(
            self.preprocess(images),
            self.image_whwh,
            noise,
            steps=spec.steps,
            renewal_threshold=spec.renewal_threshold,
        )
        per_image = [self._detections(candidates, b) for b in range(spec.batch)]
        boxes, scores, labels, count = (torch.stack(field) for field in zip(*per_image, strict=True))
        return boxes, scores, labels, count

    def _detections(self, candidates: Candidates, b: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """NMS, cap, scale, clip and pack one image's candidates into K rows."""
        boxes, scores, labels = candidates.boxes[b], candidates.scores[b], candidates.labels[b]
        k = self.spec.max_detections
        if self.spec.nms_iou is None:
            keep = torch.topk(scores, k).indices
            count = torch.tensor(k, dtype=torch.int64, device=scores.device)
        else:
            keep, count = batched_nms_padded(boxes, scores, labels, self.spec.nms_iou)
            keep, count = keep[:k], count.clamp(max=k)
        valid = torch.arange(k, device=keep.device) < count
        keep = keep.clamp(min=0)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        boxes, nonempty = postprocess_boxes(boxes, self.resized, (self.spec.height, self.spec.width))
        valid = valid & nonempty
        # Pack the valid rows first, keeping their order: sort by a key distinct per row.
        rank = torch.arange(k, 0, -1, device=keep.device) + valid.to(torch.int64) * k
        order = torch.topk(rank, k).indices
        valid = valid[order]
        zero = torch.zeros((), device=boxes.device)
        boxes = torch.where(valid[:, None], boxes[order], zero)
        scores = torch.where(valid, scores[order], zero)
        labels = torch.where(valid, labels[order], 0)
        return boxes, scores, labels, valid.sum().to(torch.int64)
