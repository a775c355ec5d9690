"""``DiffusionDet``: the detector module, with torchvision's detection-model contract.

``model(images)`` in eval mode returns one dict per image (``boxes`` [n, 4] xyxy original-image pixels,
``scores`` [n], ``labels`` [n] int64 contiguous); ``model(images, targets)`` in train mode returns the
dict of weighted losses. The backbone and FPN run once per call; the head runs once per sampling step.

State: ``backbone.*`` and ``head.*`` as in the reference checkpoint, plus its 12 float64 diffusion
buffers at the top level. Those buffers stay float64 whatever ``model.to(dtype)`` asks (``_apply``
below), because the sampler's arithmetic follows the reference's float64 promotion; the pixel mean and
std are non-persistent float32 buffers (not in the reference state_dict).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from diffdet.losses import build_criterion
from diffdet.modeling.backbone import build_backbone
from diffdet.modeling.backbone.conv import set_inference_folding
from diffdet.modeling.config import ENSEMBLES, ModelConfig
from diffdet.modeling.diffusion import SCHEDULE_BUFFERS, schedule_buffers
from diffdet.modeling.head import DynamicHead
from diffdet.modeling.preprocess import ImageBatch, as_image_list, postprocess_boxes, preprocess_images
from diffdet.modeling.sampler import (
    Candidates,
    DDIMSampler,
    Generators,
    draw_noise,
    merge_step_records,
    nms_per_image,
)
from diffdet.modeling.targets import prepare_targets
from diffdet.ops._backend import published_mode


class DiffusionDet(nn.Module):
    """DiffusionDet: ResNet-FPN or Swin-FPN backbone, dynamic head, DDIM box sampler.

    Args:
        cfg: the model hyper-parameters.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(
            cfg.backbone,
            norm=cfg.backbone_norm,
            freeze_at=cfg.freeze_at,
            out_channels=cfg.hidden_dim,
            fpn_norm=cfg.fpn_norm,
        )
        shapes = self.backbone.output_shape()
        self.head = DynamicHead(
            cfg.num_classes,
            [s.stride for s in shapes.values()],
            d_model=cfg.hidden_dim,
            dim_feedforward=cfg.dim_feedforward,
            nhead=cfg.nheads,
            dropout=cfg.dropout,
            num_heads=cfg.num_heads,
            num_cls=cfg.num_cls,
            num_reg=cfg.num_reg,
            dim_dynamic=cfg.dim_dynamic,
            num_dynamic=cfg.num_dynamic,
            pooler_resolution=cfg.pooler_resolution,
            sampling_ratio=cfg.sampling_ratio,
            prior_prob=cfg.prior_prob,
        )
        for name, value in schedule_buffers(cfg.timesteps).items():
            self.register_buffer(name, value)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False)
        self.criterion = build_criterion(cfg.num_classes, cfg.loss)
        self.sampler = DDIMSampler(self.alphas_cumprod, cfg.snr_scale)
        self.inference_fusion = True

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each contiguous label."""
        return self.cfg.class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        """Dataset category id of each contiguous label."""
        return self.cfg.category_ids

    @property
    def device(self) -> torch.device:
        """Where the model runs (images are moved here)."""
        return self.pixel_mean.device

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DiffusionDet:
        # Device moves apply to every buffer; dtype casts skip the float64 schedule and pixel stats.
        keep = {n: self._buffers[n] for n in (*SCHEDULE_BUFFERS, "pixel_mean", "pixel_std")}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def fuse_for_inference(self, enabled: bool = True) -> DiffusionDet:
        """Turn the inference fusions on (the default) or off; returns ``self``.

        On: calls without autograd fold every FrozenBatchNorm of the backbone into its convolution
        (cached, see :class:`~diffdet.modeling.backbone.conv.Conv2d`), run the backbone and FPN
        channels-last end to end (the layout the RoI pooler reads fastest), and on the CPU run each
        convolution's residual add and ReLU as oneDNN post-ops. Enabling also computes the folded
        weights now. Parameters, buffers and the state_dict keep the reference layout either way, so
        checkpoints save and load as usual. Off: the published code's ops (NCHW, unfolded norms).
        A Swin trunk has no FrozenBatchNorm to fold; its FPN still runs channels-last. The published
        mode (:func:`diffdet.set_backend`) runs as if off, whatever this says.
        """
        self.inference_fusion = enabled
        set_inference_folding(self.backbone, enabled)
        return self

    def features(self, images: Tensor) -> list[Tensor]:
        """Backbone + FPN: [B, 3, Hp, Wp] normalised padded images -> p2..p5 maps, finest first.

        Outside training (and with the inference fusions on, see :meth:`fuse_for_inference`) the
        images are made channels-last once here, so the backbone and FPN run channels-last end to end
        and the maps come out in the layout every head stage of every step pools fastest (NCHW maps
        would be copied per call). Training and the published mode keep NCHW (the pooler's backward
        returns NCHW gradients; the published code runs NCHW).
        """
        if self.training or not self.inference_fusion or published_mode():
            return list(self.backbone(images).values())
        maps = self.backbone(images.contiguous(memory_format=torch.channels_last)).values()
        return [m.contiguous(memory_format=torch.channels_last) for m in maps]  # a no-op unless a map was not

    def preprocess(self, images: Tensor | Sequence[Tensor], *, resize: bool) -> ImageBatch:
        """Validate, resize (when ``resize``), normalise and pad images; see :mod:`preprocess`."""
        image_list = as_image_list(images)
        if not image_list:
            raise ValueError("images must hold at least one image, got an empty batch")
        device = self.pixel_mean.device
        resize_to = (self.cfg.min_size_test, self.cfg.max_size_test) if resize else None
        return preprocess_images(
            [im.to(device) for im in image_list],
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            size_divisibility=max(self.cfg.size_divisibility, self.backbone.size_divisibility),
            resize_to=resize_to,
            dtype=self.head.time_mlp[1].weight.dtype,
        )

    def forward(
        self,
        images: Tensor | Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        *,
        resize: bool | None = None,
        num_boxes: int | None = None,
        steps: int | None = None,
        renewal_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
        seed: int | None = None,
        generator: Generators = None,
        ensemble: str | None = None,
        init_boxes: Tensor | None = None,
        return_intermediates: bool = False,
    ):
        """Detect (eval mode) or compute the training losses (train mode).

        Args:
            images: a [B, 3, H, W] tensor or a list of [3, H, W] RGB tensors, uint8 (0-255) or float
                in [0, 1].
            targets: train mode only: per image ``boxes`` [n, 4] xyxy pixels of the given image and
                ``labels`` [n] int64 in [0, num_classes).
            resize: shortest-edge resize to (min_size_test, max_size_test). Default: True in eval
                (the reference's test mapper), False in train (the data pipeline resizes). Targets are
                scaled with their image.
            num_boxes: P, boxes sampled per image (default ``cfg.num_proposals``); 0 gives no detections.
            steps: DDIM steps S (default ``cfg.sample_steps``).
            renewal_threshold: box renewal score threshold (default 0.5).
            nms_iou: class-aware NMS IoU (default 0.5; no NMS when ``cfg.use_nms`` is False).
            max_detections: cap per image (highest scores); None keeps all, as the reference.
            seed: draw the sampler's noise from a fresh generator seeded with it.
            generator: a torch.Generator, or one per image (a batch then reproduces each image's
                batch-1 run); the device's global generator when None and no seed.
            ensemble: "all" (fast, every step ensembled, per-image renewal) or "reference" (the
                published sampler, its random draws and ensemble; batches with S > 1 run image by image).
                None: "reference" in the published mode (:func:`diffdet.set_backend`), else "all".
            init_boxes (Tensor[B, P, 4]): starting boxes in diffusion space instead of the first draw.
            return_intermediates: also return, per step, the head input and every stage's output.

        Returns:
            Eval: list of dicts ``boxes`` [n, 4] float32 xyxy original-image pixels (clipped),
            ``scores`` [n] float32 (sigmoid), ``labels`` [n] int64, by decreasing score; with
            ``return_intermediates`` a tuple (detections, list of per-step dicts, see
            :func:`diffdet.modeling.sampler._record`). Train: dict of scalar weighted losses (18 terms
            with 6 stages and deep supervision).

        Raises:
            ValueError: bad images, targets or knobs (the message names the argument).
        """
        if self.training:
            if targets is None:
                raise ValueError("targets must be given in train mode (call model.eval() to detect)")
            return self._losses(images, targets, resize=bool(resize))
        return self.detect(
            images, resize=True if resize is None else resize, num_boxes=num_boxes, steps=steps,
            renewal_threshold=renewal_threshold, nms_iou=nms_iou, max_detections=max_detections, seed=seed,
            generator=generator, ensemble=ensemble, init_boxes=init_boxes,
            return_intermediates=return_intermediates,
        )  # fmt: skip

    def resolve_knobs(
        self,
        num_boxes: int | None,
        steps: int | None,
        renewal_threshold: float | None,
        nms_iou: float | None,
        max_detections: int | None,
        ensemble: str,
    ) -> tuple[int, int, float, float | None]:
        """Fill the per-call inference knobs from the config and validate them.

        Returns:
            (num_boxes, steps, renewal_threshold, nms_iou), nms_iou None when ``cfg.use_nms`` is False.

        Raises:
            ValueError: a knob is out of range (the message names it).
        """
        cfg = self.cfg
        num_boxes = cfg.num_proposals if num_boxes is None else int(num_boxes)
        steps = cfg.sample_steps if steps is None else int(steps)
        renewal_threshold = cfg.renewal_threshold if renewal_threshold is None else float(renewal_threshold)
        nms_iou = (cfg.nms_iou if nms_iou is None else float(nms_iou)) if cfg.use_nms else None
        if num_boxes < 0:
            raise ValueError(f"num_boxes must be >= 0, got {num_boxes}")
        if not 1 <= steps <= cfg.timesteps:
            raise ValueError(f"steps must be in [1, {cfg.timesteps}], got {steps}")
        if max_detections is not None and max_detections < 0:
            raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
        if nms_iou is not None and not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        return num_boxes, steps, renewal_threshold, nms_iou

    @torch.no_grad()
    def detect(
        self,
        images: Tensor | Sequence[Tensor],
        *,
        resize: bool = True,
        num_boxes: int | None = None,
        steps: int | None = None,
        renewal_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
        seed: int | None = None,
        generator: Generators = None,
        ensemble: str | None = None,
        init_boxes: Tensor | None = None,
        return_intermediates: bool = False,
    ):
        """Inference whatever the train/eval mode; arguments and results as :meth:`forward` in eval."""
        if ensemble is None:
            ensemble = "reference" if published_mode() else "all"
        num_boxes, steps, renewal_threshold, nms_iou = self.resolve_knobs(
            num_boxes, steps, renewal_threshold, nms_iou, max_detections, ensemble
        )
        if isinstance(images, Sequence) and not isinstance(images, Tensor) and len(images) == 0:
            return ([], []) if return_intermediates else []
        batch = self.preprocess(images, resize=resize)
        size = len(batch.image_sizes)
        device = batch.tensor.device
        if init_boxes is not None:
            if not isinstance(init_boxes, Tensor) or tuple(init_boxes.shape) != (size, num_boxes, 4):
                shape = (
                    tuple(init_boxes.shape) if isinstance(init_boxes, Tensor) else type(init_boxes).__name__
                )
                raise ValueError(f"init_boxes must be [{size}, {num_boxes}, 4], got {shape}")
            if not init_boxes.dtype.is_floating_point:
                raise ValueError(f"init_boxes must be floating, got {init_boxes.dtype}")
            init_boxes = init_boxes.to(device)
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        intermediates: list[dict] | None = [] if return_intermediates else None
        if num_boxes == 0:
            empty = self._empty(device)
            return ([empty] * size, []) if return_intermediates else [empty] * size
        if ensemble == "all":
            count = 2 * steps - 1 - (init_boxes is not None)
            noise = draw_noise(count, size, num_boxes, device, generator)
            candidates = self.sample_fixed(
                batch.tensor, batch.image_whwh, noise, steps=steps, renewal_threshold=renewal_threshold,
                init_boxes=init_boxes, intermediates=intermediates,
            )  # fmt: skip
        else:
            candidates = self._sample_reference(
                self.features(batch.tensor),
                batch.image_whwh,
                num_boxes,
                steps,
                renewal_threshold,
                generator,
                init_boxes,
                intermediates,
            )
        results = self.finalize(candidates, batch, nms_iou=nms_iou, max_detections=max_detections)
        return (results, intermediates) if return_intermediates else results

    def sample_fixed(
        self,
        images: Tensor,
        image_whwh: Tensor,
        noise: Tensor,
        *,
        steps: int,
        renewal_threshold: float,
        init_boxes: Tensor | None = None,
        intermediates: list[dict] | None = None,
    ) -> Candidates:
        """Backbone + FPN, then the fast sampler (``ensemble="all"``): fixed shapes, no host sync.

        The one body of :meth:`detect`'s fast path, of the CUDA-graph capture
        (:class:`~diffdet.modeling.cuda_graph.CudaGraphSampler`) and of the exported graphs
        (:mod:`diffdet.export`).

        Args:
            images (Tensor[B, 3, Hp, Wp]): normalised, padded images in the model's dtype.
            image_whwh (Tensor[B, 4]): (w, h, w, h) of each resized image, float32.
            noise (Tensor[N, B, P, 4]): the sampler's noise (see :func:`draw_noise`).
            steps, renewal_threshold, init_boxes, intermediates: as :meth:`DDIMSampler.sample`.

        Returns:
            Candidates [B, S * P].
        """
        features = self.features(images)
        return self.sampler.sample(
            lambda boxes, t: self.head(features, boxes, t), image_whwh, noise=noise, steps=steps,
            renewal_threshold=renewal_threshold, init_boxes=init_boxes, intermediates=intermediates,
        )  # fmt: skip

    def finalize(
        self, candidates: Candidates, batch: ImageBatch, *, nms_iou: float | None, max_detections: int | None
    ) -> list[dict[str, Tensor]]:
        """Sampler candidates -> detections: class-aware NMS, cap, scale to the original image, clip,
        drop empty boxes (the reference's ``batched_nms`` then ``detector_postprocess``).

        Args:
            candidates: [B, E] ensembled (box, score, label) triples, resized-image pixels.
            batch: the preprocessed batch they come from (for the image sizes).
            nms_iou: NMS IoU threshold, or None for no NMS.
            max_detections: cap per image, or None.

        Returns:
            Per image a dict ``boxes`` [n, 4] original-image pixels, ``scores`` [n], ``labels`` [n].
        """
        detections = nms_per_image(
            candidates, num_classes=self.cfg.num_classes, iou_threshold=nms_iou, max_detections=max_detections
        )
        return [
            self._postprocess(d, r, o)
            for d, r, o in zip(detections, batch.image_sizes, batch.original_sizes, strict=True)
        ]

    def _sample_reference(
        self,
        features: list[Tensor],
        whwh: Tensor,
        num_boxes: int,
        steps: int,
        renewal_threshold: float,
        generator: Generators,
        init_boxes: Tensor | None,
        intermediates: list[dict] | None,
    ) -> Candidates:
        """The published sampler; one image at a time (batch 1) when S > 1, as it requires, or when
        each image has its own generator."""
        size = whwh.shape[0]
        per_image = isinstance(generator, Sequence)
        if per_image and len(generator) != size:
            raise ValueError(
                f"generator must be one generator or {size} (one per image), got {len(generator)}"
            )
        groups = [slice(b, b + 1) for b in range(size)] if steps > 1 or per_image else [slice(0, size)]
        parts, records = [], []
        for i, group in enumerate(groups):
            gen = generator[i] if per_image else generator
            record: list[dict] | None = [] if intermediates is not None else None
            parts.append(
                self.sampler.sample_reference(
                    lambda boxes, t, g=group: self.head([f[g] for f in features], boxes, t),
                    whwh[group],
                    num_boxes=num_boxes,
                    steps=steps,
                    renewal_threshold=renewal_threshold,
                    generator=gen,
                    init_boxes=None if init_boxes is None else init_boxes[group],
                    intermediates=record,
                )
            )
            records.append(record)
        if intermediates is not None:
            intermediates.extend(merge_step_records(records))
        return Candidates(*(torch.cat(field, dim=0) for field in zip(*parts, strict=True)))

    def _empty(self, device: torch.device) -> dict[str, Tensor]:
        return {
            "boxes": torch.zeros((0, 4), device=device),
            "scores": torch.zeros((0,), device=device),
            "labels": torch.zeros((0,), dtype=torch.int64, device=device),
        }

    @staticmethod
    def _postprocess(
        detection: tuple[Tensor, Tensor, Tensor], resized: tuple[int, int], original: tuple[int, int]
    ) -> dict[str, Tensor]:
        boxes, scores, labels = detection
        boxes, keep = postprocess_boxes(boxes, resized, original)
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def _losses(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]], *, resize: bool
    ) -> dict[str, Tensor]:
        """Training: noisy GT-padded boxes (REFERENCE.md §4) through the head, then the criterion."""
        batch = self.preprocess(images, resize=resize)
        cfg = self.cfg
        prepared, x_boxes, t = prepare_targets(
            targets,
            batch,
            num_classes=cfg.num_classes,
            num_proposals=cfg.num_proposals,
            scale=cfg.snr_scale,
            timesteps=cfg.timesteps,
            sqrt_alphas_cumprod=self.sqrt_alphas_cumprod,
            sqrt_one_minus=self.sqrt_one_minus_alphas_cumprod,
        )
        logits, pred_boxes = self.head(self.features(batch.tensor), x_boxes, t)
        aux = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], pred_boxes[:-1], strict=True)]
        outputs = {"pred_logits": logits[-1], "pred_boxes": pred_boxes[-1], "aux_outputs": aux}
        return self.criterion(outputs, prepared)
