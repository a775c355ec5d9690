"""``CudaGraphSampler``: backbone, head and the whole DDIM loop replayed from one CUDA graph.

For a fixed (batch size, padded image size, boxes, steps) everything from the normalised images to the
ensembled candidates has static shapes and no host sync (the fast sampler, ``ensemble="all"``), so it
is captured once and replayed per call: one graph launch instead of hundreds of kernel launches. The
per-call work outside the graph is the preprocessing, one noise draw into the static noise buffer, and
the NMS and post-processing (which read the detection count back: the call's one sync).

Results equal ``model.detect(..., ensemble="all")`` with the same noise: the captured function is
:meth:`CudaGraphSampler.run`, which is :meth:`DiffusionDet.sample_fixed`, what ``detect`` runs eagerly.

Capture and replay run with the model's device current (``torch.cuda.device``) and capture on a
stream of that device: a graph is replayed into the current device's stream, so a model on ``cuda:1``
works whatever device is current (the Triton kernels inside guard their own launches too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffdet.modeling.detector import DiffusionDet
from diffdet.modeling.sampler import Candidates, Generators, draw_noise
from diffdet.ops._backend import published_mode


class CudaGraphSampler:
    """Capture ``model``'s detection of fixed-size batches in a CUDA graph and replay it.

    Args:
        model: a DiffusionDet on a CUDA device, in eval mode. Its inference fusions (folded
            FrozenBN, see :meth:`DiffusionDet.fuse_for_inference`) are made warm before capture, so
            the graph reads the folded weights the model caches.
        batch_size: B of every call.
        padded_size: (Hp, Wp) of the preprocessed batch (multiples of the size divisibility; 800x1344
            for COCO landscape images resized to 800x1333 for instance).
        num_boxes: P.
        steps: S.
        renewal_threshold: box renewal threshold (default ``cfg.renewal_threshold``).
        warmup: eager runs on a side stream before capture (compiles and autotunes the kernels).

    Raises:
        ValueError: the published mode is on (:func:`diffdet.set_backend`: its pooling loop and sampler
            sync with the host, which a graph cannot capture), the model is not on CUDA, or a size is
            invalid.
    """

    def __init__(
        self,
        model: DiffusionDet,
        *,
        batch_size: int,
        padded_size: tuple[int, int],
        num_boxes: int | None = None,
        steps: int | None = None,
        renewal_threshold: float | None = None,
        warmup: int = 3,
    ) -> None:
        if published_mode():
            raise ValueError(
                "CudaGraphSampler runs the fast path only; the published mode is on "
                "(DIFFDET_BACKEND=published or diffdet.set_backend('published'))"
            )
        device = model.pixel_mean.device
        if device.type != "cuda":
            raise ValueError(f"model must be on a CUDA device for CudaGraphSampler, got {device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        divisor = max(model.cfg.size_divisibility, model.backbone.size_divisibility)
        if len(padded_size) != 2 or any(s < 1 or s % divisor for s in padded_size):
            raise ValueError(
                f"padded_size must be (Hp, Wp), positive multiples of {divisor}, got {padded_size}"
            )
        num_boxes, steps, renewal_threshold, _ = model.resolve_knobs(
            num_boxes, steps, renewal_threshold, None, None, "all"
        )
        if num_boxes < 1:
            raise ValueError(f"num_boxes must be >= 1, got {num_boxes}")
        self.model = model.eval().fuse_for_inference(model.inference_fusion)
        self.batch_size, self.padded_size = batch_size, tuple(padded_size)
        self.num_boxes, self.steps, self.renewal_threshold = num_boxes, steps, renewal_threshold
        dtype = model.head.time_mlp[1].weight.dtype
        self._images = torch.zeros((batch_size, 3, *padded_size), dtype=dtype, device=device)
        self._whwh = torch.tensor(
            [[padded_size[1], padded_size[0]] * 2] * batch_size, dtype=torch.float32, device=device
        )
        self._noise = torch.randn((2 * steps - 1, batch_size, num_boxes, 4), device=device)
        with torch.cuda.device(device):  # torch.cuda.graph captures on the current device's stream
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(warmup):
                    self.run(self._images, self._whwh, self._noise)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # An explicit capture stream: torch.cuda.graph's default one is created once per process,
            # on whichever device was current then.
            with torch.no_grad(), torch.cuda.graph(self.graph, stream=side):
                self._out = self.run(self._images, self._whwh, self._noise)

    def run(self, images: Tensor, image_whwh: Tensor, noise: Tensor) -> Candidates:
        """The captured computation: backbone + FPN, then the fast sampler (no host sync).

        Args:
            images (Tensor[B, 3, Hp, Wp]): normalised, padded images in the model's dtype.
            image_whwh (Tensor[B, 4]): (w, h, w, h) of each resized image, float32.
            noise (Tensor[2S - 1, B, P, 4]): the sampler's noise (see :func:`draw_noise`).

        Returns:
            Candidates [B, S * P].
        """
        return self.model.sample_fixed(
            images, image_whwh, noise, steps=self.steps, renewal_threshold=self.renewal_threshold
        )

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor | Sequence[Tensor],
        *,
        resize: bool = True,
        nms_iou: float | None = None,
        max_detections: int | None = None,
        seed: int | None = None,
        generator: Generators = None,
    ) -> list[dict[str, Tensor]]:
        """Detect objects in a batch of the captured size; arguments as :meth:`DiffusionDet.forward`.

        Raises:
            ValueError: the batch size or padded image size differs from the captured one.
        """
        model = self.model
        _, _, _, nms_iou = model.resolve_knobs(
            self.num_boxes, self.steps, None, nms_iou, max_detections, "all"
        )
        batch = model.preprocess(images, resize=resize)
        if tuple(batch.tensor.shape) != tuple(self._images.shape):
            raise ValueError(
                f"images must preprocess to {tuple(self._images.shape)} (the captured batch), "
                f"got {tuple(batch.tensor.shape)}"
            )
        device = self._images.device
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        self._images.copy_(batch.tensor)
        self._whwh.copy_(batch.image_whwh)
        self._noise.copy_(draw_noise(2 * self.steps - 1, self.batch_size, self.num_boxes, device, generator))
        with torch.cuda.device(device):  # replay on the graph's device's current stream
            self.graph.replay()
        candidates = Candidates(*(t.clone() for t in self._out))
        return model.finalize(candidates, batch, nms_iou=nms_iou, max_detections=max_detections)
