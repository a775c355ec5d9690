"""What the benchmark grid measures (no torch import: the ``diffdet bench`` parser reads these)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MODES = ("fp32", "bf16", "fp16", "graph", "graph-bf16", "graph-fp16")
"""Fast-path modes: eager in a dtype, or the CUDA graph of the sampling loop ("graph" is fp32)."""

BASELINES = ("reference", "published")
"""Backends a fast figure is compared with (run under ``diffdet.set_backend``): the plain-PyTorch
references, or the published computation (torchvision's roi_align per level and batched_nms, references
elsewhere, the NCHW unfolded backbone, the published Swin attention)."""

RUNTIMES = ("eager", "onnxruntime", "openvino", "openvino-bf16", "int8", "torch")
"""``--runtimes`` names: eager PyTorch (the fp32 mode), the exported graph in ONNX Runtime, in
OpenVINO (f32; ``openvino-bf16``: OpenVINO's bf16 inference, for AMX / AVX512-BF16 CPUs), int8
(dynamically quantized) in ONNX Runtime, and the ``.pt2`` graph in PyTorch."""

DEFAULT_BOXES = (100, 300, 500, 1000, 2000)
DEFAULT_STEPS = (1, 2, 4)

PUBLISHED = {
    "fps": 30.0,
    "device": "NVIDIA A100",
    "batch": 1,
    "backbone": "R50",
    "num_boxes": 300,
    "steps": 1,
    "source": "DiffusionDet paper (Chen et al., ICCV 2023), Table 6 / Figure 3; detectron2 pure compute time",
}
"""The published speed to compare with: 30 FPS on one A100, batch 1, R50, 300 boxes, 1 step."""


@dataclass
class GridSettings:
    """What the grid measures.

    Attributes:
        boxes: num_boxes values P.
        steps: DDIM step counts S.
        modes: fast-path modes (see :data:`MODES`).
        batch: images per call.
        size: (H, W) of the synthetic input images in pixels; the model's test resize is set to it.
        warmup: untimed calls per grid point and mode.
        iters: timed calls per grid point and mode.
        baselines: op backends of :data:`BASELINES` also timed (fp32, eager), each giving every fast
            figure its speed ratio and detection comparison.
        seed: seed of the images and of the sampler's noise.
        ap_fn: ``(model, num_boxes, steps) -> COCO metrics``, called per fast mode and point when set.
        runtimes: exported runtimes also timed at each point (names of
            :data:`RUNTIMES`; ``eager`` is the fp32 mode), each exported there.
    """

    boxes: Sequence[int] = DEFAULT_BOXES
    steps: Sequence[int] = DEFAULT_STEPS
    modes: Sequence[str] = ("fp32",)
    batch: int = 1
    size: tuple[int, int] = (800, 1333)
    warmup: int = 2
    iters: int = 10
    baselines: Sequence[str] = ("reference",)
    seed: int = 0
    ap_fn: Callable[[object, int, int], dict[str, float]] | None = field(default=None, repr=False)
    runtimes: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("boxes", "steps"):
            values = list(getattr(self, name))
            if not values or min(values) < 1:
                raise ValueError(f"{name} must be a non-empty list of integers >= 1, got {values}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (H, W) with H, W >= 1, got {self.size}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"baselines must be among {BASELINES}, got {unknown}")
        if self.iters < 1 or self.warmup < 0:
            raise ValueError(f"iters must be >= 1 and warmup >= 0, got {self.iters}, {self.warmup}")
