"""DDIM sampling of boxes with renewal and ensembling (REFERENCE.md §4 and §7).

Two modes, chosen per call by ``ensemble``:

``"all"`` (default, fast): every random number of the call is drawn up front in one
    ``randn(2S - 1, B, P, 4)`` (initial boxes, then per step the DDIM noise and the refill noise; the
    initial slice is skipped when ``init_boxes`` is given), renewal is per image and fused in
    :func:`diffdet.ops.ddim_renewal_step`, every step's predictions are ensembled (the last one too).
    The loop has no host sync and fixed shapes, so it can be captured in a CUDA graph.
``"reference"``: the published ``ddim_sample``. Random numbers are drawn in its order, shapes and
    dtypes (``randn(B, P, 4)``; per step but the last ``randn_like(img)`` of shape (1, kept, 4), float64
    after the first update, then ``randn(1, P - kept, 4)``), renewal uses
    :func:`diffdet.ops.ddim_renewal_step_reference` (the published float64 promotion), and for S > 1 the
    last step is not ensembled. Host syncs are allowed here (data-dependent shapes). The published code
    only runs batch 1 when S > 1; callers run such batches one image at a time.

Box frames: ``img`` is the diffusion space (normalised cxcywh * 2 - 1, * scale, unclamped); the head
takes and returns xyxy pixels of the resized (unpadded) image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from diffdet.modeling.box_ops import box_cxcywh_to_xyxy
from diffdet.modeling.diffusion import ddim_time_pairs
from diffdet.ops import batched_nms, ddim_renewal_step, ddim_renewal_step_reference

HeadFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""(boxes [B, P, 4] xyxy pixels, t [B] int64) -> (logits [stages, B, P, K], boxes [stages, B, P, 4])."""

Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the batch, one per image (a batch then draws what each image draws alone), or
None for the device's global generator."""


class Candidates(NamedTuple):
    """Ensembled (box, score, label) triples before NMS, per image.

    Attributes:
        boxes (Tensor[B, E, 4]): xyxy pixels of the resized image, float32.
        scores (Tensor[B, E]): sigmoid class probability, float32.
        labels (Tensor[B, E]): int64 contiguous class.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def diffusion_to_boxes(img: Tensor, image_whwh: Tensor, scale: float) -> Tensor:
    """Map diffusion-space boxes to the head's input: clamp, ``(x / scale + 1) / 2``, xyxy, times whwh.

    Args:
        img (Tensor[B, P, 4]): diffusion-space cxcywh, float32 or float64.
        image_whwh (Tensor[B, 4]): (w, h, w, h) of each resized image, float32.
        scale: signal scale.

    Returns:
        Tensor[B, P, 4]: xyxy pixels, ``img``'s dtype (float64 stays float64, as in the reference).
    """
    x = torch.clamp(img, min=-scale, max=scale)
    x = ((x / scale) + 1) / 2
    return box_cxcywh_to_xyxy(x) * image_whwh[:, None, :]


def topk_candidates(logits: Tensor, boxes: Tensor, k: int) -> Candidates:
    """The reference's ``inference`` selection: top-k over all box-class pairs of each image.

    Args:
        logits (Tensor[B, P, K]): last-stage class logits.
        boxes (Tensor[B, P, 4]): last-stage boxes, xyxy pixels.
        k: pairs kept per image (P in the reference), <= P * K.

    Returns:
        Candidates with E = k, in ``topk(sorted=False)`` order; label = index % K, box = index // K.
    """
    num_classes = logits.shape[-1]
    scores = torch.sigmoid(logits.float()).flatten(1)  # [B, P*K]
    scores, index = scores.topk(k, dim=1, sorted=False)  # [B, k]
    labels = index % num_classes
    box_index = (index // num_classes)[:, :, None].expand(-1, -1, 4)
    return Candidates(torch.gather(boxes.float(), 1, box_index), scores, labels)


def _cat(parts: list[Candidates]) -> Candidates:
    return Candidates(*(torch.cat(field, dim=1) for field in zip(*parts, strict=True)))


def draw_noise(count: int, batch: int, num_boxes: int, device: torch.device, generator: Generators) -> Tensor:
    """``count`` standard-normal [B, P, 4] tensors in one draw (the fast mode's noise).

    Args:
        count: number of tensors (2S - 1, or 2S - 2 with ``init_boxes``).
        batch: B.
        num_boxes: P.
        device: where to draw.
        generator: see :data:`Generators`; a sequence must hold B generators on ``device``.

    Returns:
        Tensor[count, B, P, 4] float32.
    """
    if isinstance(generator, Sequence):
        if len(generator) != batch:
            raise ValueError(
                f"generator must be one generator or {batch} (one per image), got {len(generator)}"
            )
        draws = [torch.randn((count, num_boxes, 4), device=device, generator=g) for g in generator]
        return torch.stack(draws, dim=1)
    return torch.randn((count, batch, num_boxes, 4), device=device, generator=generator)


class DDIMSampler:
    """DDIM sampler over a head (eta = 1, renewal, ensemble), schedule held on the host.

    Args:
        alphas_cumprod (Tensor[T]): float64 ᾱ of the schedule (read once into Python floats, so the
            loop never reads device memory).
        scale: signal scale (2.0).
        eta: DDIM eta (1.0 in the reference).
    """

    def __init__(self, alphas_cumprod: Tensor, scale: float, eta: float = 1.0) -> None:
        self.alphas = alphas_cumprod.detach().double().cpu().tolist()
        self.timesteps = len(self.alphas)
        self.scale = float(scale)
        self.eta = float(eta)

    def time_pairs(self, steps: int) -> list[tuple[int, int]]:
        """The (time, time_next) pairs of ``steps`` DDIM steps (see :func:`ddim_time_pairs`)."""
        return ddim_time_pairs(self.timesteps, steps)

    def sample(
        self,
        head: HeadFn,
        image_whwh: Tensor,
        *,
        noise: Tensor,
        steps: int,
        renewal_threshold: float,
        init_boxes: Tensor | None = None,
        intermediates: list[dict] | None = None,
    ) -> Candidates:
        """The fast sampler (``ensemble="all"``): fixed shapes, no host sync.

        Args:
            head: the head bound to the images' features.
            image_whwh (Tensor[B, 4]): (w, h, w, h) of each resized image, float32.
            noise (Tensor[N, B, P, 4]): from :func:`draw_noise`: N = 2S - 1 (initial boxes first), or
                2S - 2 when ``init_boxes`` is given; then per step the DDIM noise and the refill noise.
            steps: S.
            renewal_threshold: a box survives renewal when its max class probability is above this.
            init_boxes (Tensor[B, P, 4] | None): starting boxes in diffusion space (replace the draw).
            intermediates: when a list, one dict per step is appended (see :func:`_record`).

        Returns:
            Candidates with E = S * P per image: every step's top-P pairs.

        Raises:
            ValueError: ``noise`` is not [N, B, P, 4] with the N above.
        """
        pairs = self.time_pairs(steps)
        count = 2 * steps - 1 - (init_boxes is not None)
        batch = image_whwh.shape[0]
        if noise.dim() != 4 or noise.shape[0] != count or noise.shape[1] != batch or noise.shape[3] != 4:
            raise ValueError(
                f"noise must be [{count}, {batch}, P, 4] for {steps} steps, got {tuple(noise.shape)}"
            )
        if init_boxes is None:
            img, noise = noise[0], noise[1:]
        else:
            img = init_boxes.float()
        num_boxes = img.shape[1]
        boxes = diffusion_to_boxes(img, image_whwh, self.scale)
        parts = []
        for i, (time, time_next) in enumerate(pairs):
            t = torch.full((batch,), time, dtype=torch.int64, device=img.device)
            logits, pred_boxes = head(boxes, t)
            parts.append(topk_candidates(logits[-1], pred_boxes[-1], num_boxes))
            step_img, step_boxes = img, boxes
            num_kept = None
            if time_next >= 0:
                img, boxes, num_kept = ddim_renewal_step(
                    img,
                    pred_boxes[-1],
                    logits[-1],
                    image_whwh,
                    noise[2 * i],
                    noise[2 * i + 1],
                    **self._renewal_options(time, time_next, renewal_threshold),
                )
            if intermediates is not None:
                intermediates.append(
                    _record(time, time_next, step_img, step_boxes, logits, pred_boxes, num_kept)
                )
        return _cat(parts)

    def _renewal_options(self, time: int, time_next: int, renewal_threshold: float) -> dict:
        """Keyword arguments of ``ddim_renewal_step`` (and its reference) for the step time -> time_next."""
        return dict(
            alpha=self.alphas[time],
            alpha_next=self.alphas[time_next],
            eta=self.eta,
            scale=self.scale,
            renewal_threshold=renewal_threshold,
        )

    def sample_reference(
        self,
        head: HeadFn,
        image_whwh: Tensor,
        *,
        num_boxes: int,
        steps: int,
        renewal_threshold: float,
        generator: torch.Generator | None = None,
        init_boxes: Tensor | None = None,
        intermediates: list[dict] | None = None,
    ) -> Candidates:
        """The published ``ddim_sample`` (``ensemble="reference"``), random draws included.

        Args:
            head, image_whwh, steps, renewal_threshold, init_boxes, intermediates: as :meth:`sample`.
            num_boxes: P.
            generator: draws from it (the device's global generator when None, as the reference).

        Returns:
            Candidates: the top-P pairs of the only step when S = 1; for S > 1 those of every step but
            the last (E = (S - 1) * P).

        Raises:
            ValueError: S > 1 with more than one image (the published sampler is batch 1 there).
        """
        batch = image_whwh.shape[0]
        if steps > 1 and batch != 1:
            raise ValueError(f"sample_reference runs batch 1 when steps > 1, got a batch of {batch}")
        device = image_whwh.device
        if init_boxes is None:
            img = torch.randn((batch, num_boxes, 4), device=device, generator=generator)
        else:
            img = init_boxes.float()
        parts = []
        for time, time_next in self.time_pairs(steps):
            t = torch.full((batch,), time, dtype=torch.int64, device=device)
            boxes = diffusion_to_boxes(img, image_whwh, self.scale)
            logits, pred_boxes = head(boxes, t)
            num_kept = None
            step_img = img
            if time_next >= 0:
                # Renewal mask of image 0, as published; its count sizes the draws below.
                kept = int((torch.sigmoid(logits[-1][0]).max(-1).values > renewal_threshold).sum())
                ddim_noise = img.new_zeros((1, num_boxes, 4))
                ddim_noise[:, :kept] = torch.randn(
                    (1, kept, 4), dtype=img.dtype, device=device, generator=generator
                )
                refill = torch.zeros((1, num_boxes, 4), device=device)
                refill[:, kept:] = torch.randn((1, num_boxes - kept, 4), device=device, generator=generator)
                img, _, num_kept = ddim_renewal_step_reference(
                    img,
                    pred_boxes[-1],
                    logits[-1],
                    image_whwh,
                    ddim_noise,
                    refill,
                    **self._renewal_options(time, time_next, renewal_threshold),
                )
            if intermediates is not None:
                intermediates.append(_record(time, time_next, step_img, boxes, logits, pred_boxes, num_kept))
            if steps == 1 or time_next >= 0:
                parts.append(topk_candidates(logits[-1], pred_boxes[-1], num_boxes))
        return _cat(parts)


def _record(
    time: int,
    time_next: int,
    img: Tensor,
    boxes: Tensor,
    logits: Tensor,
    pred_boxes: Tensor,
    num_kept: Tensor | None,
) -> dict:
    """One step of ``return_intermediates``: the step's input and every stage's output."""
    return {
        "time": time,
        "time_next": time_next,
        "img": img,  # [B, P, 4] diffusion space, the step's input (unclamped)
        "boxes": boxes,  # [B, P, 4] head input, xyxy pixels of the resized image
        "pred_logits": logits,  # [stages, B, P, K]
        "pred_boxes": pred_boxes,  # [stages, B, P, 4] xyxy pixels
        "num_kept": num_kept,  # [B] int64 boxes kept by renewal; None at the last step
    }


def merge_step_records(records: list[list[dict]]) -> list[dict]:
    """Join per-image step records (batch 1 each) into per-step records over the batch."""
    merged = []
    for steps in zip(*records, strict=True):
        first = steps[0]
        out = {"time": first["time"], "time_next": first["time_next"]}
        for key, dim in (("img", 0), ("boxes", 0), ("pred_logits", 1), ("pred_boxes", 1), ("num_kept", 0)):
            out[key] = None if first[key] is None else torch.cat([s[key] for s in steps], dim=dim)
        merged.append(out)
    return merged


def nms_per_image(
    candidates: Candidates, *, num_classes: int, iou_threshold: float | None, max_detections: int | None
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Class-aware NMS per image over the ensembled candidates, then an optional cap.

    All images go through one :func:`diffdet.ops.batched_nms` call (image index folded into the class
    index, so images never suppress each other); this is equal to one call per image.

    Args:
        candidates: [B, E] triples.
        num_classes: K (labels are in [0, K)).
        iou_threshold: NMS IoU threshold, or None to skip NMS (the reference's USE_NMS False).
        max_detections: keep at most this many per image (highest scores); None keeps all.

    Returns:
        Per image (boxes [n, 4], scores [n], labels [n]) by decreasing score, resized-image pixels.
    """
    boxes, scores, labels = candidates
    batch, count = scores.shape
    flat_boxes, flat_scores, flat_labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    image = torch.arange(batch, device=scores.device).repeat_interleave(count)
    if iou_threshold is None:
        keep = torch.argsort(flat_scores, descending=True, stable=True)
    else:
        keep = batched_nms(flat_boxes, flat_scores, flat_labels + image * num_classes, iou_threshold)
    keep = keep[torch.argsort(image[keep], stable=True)]  # per image, still by decreasing score
    sizes = torch.bincount(image[keep], minlength=batch).tolist()
    out = []
    for kept in torch.split(keep, sizes):
        kept = kept[:max_detections] if max_detections is not None else kept
        out.append((flat_boxes[kept], flat_scores[kept], flat_labels[kept]))
    return out
