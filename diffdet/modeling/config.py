"""Model hyper-parameters (``ModelConfig``) with the reference's defaults (REFERENCE.md §1).

Training-only settings (solver, data) live in :mod:`diffdet.config`; loss weights in
:class:`diffdet.losses.config.LossConfig`, nested here as ``loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffdet.losses.config import LossConfig
from diffdet.metadata.lvis import LVIS_V1_NUM_CLASSES, lvis_v1_categories

COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip
"""COCO's 80 detection classes in contiguous-label order (label i is ``COCO_CLASS_NAMES[i]``)."""

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
    58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
    88, 89, 90,
)  # fmt: skip
"""COCO category id of each contiguous label (for COCO-results files)."""

ENSEMBLES = ("all", "reference")


def _default_classes(num_classes: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and dataset ids a model of ``num_classes`` classes gets when its config names none:
    COCO's for 80, LVIS v1's for 1203, ``class{i}`` / ``i`` otherwise."""
    if num_classes == len(COCO_CLASS_NAMES):
        return COCO_CLASS_NAMES, COCO_CATEGORY_IDS
    if num_classes == LVIS_V1_NUM_CLASSES:
        categories = lvis_v1_categories()
        return tuple(c.name for c in categories), tuple(c.id for c in categories)
    return tuple(f"class{i}" for i in range(num_classes)), tuple(range(num_classes))


@dataclass
class ModelConfig:
    """Every hyper-parameter of the DiffusionDet model, defaults as the reference R50 COCO model.

    Attributes:
        backbone: backbone name for :func:`diffdet.modeling.backbone.build_backbone`: a ResNet
            ("R18", "R18-half", "R50", "R101") or a Swin Transformer ("SwinT", "SwinS", "SwinB",
            "SwinB-22k" (the same architecture as SwinB), "SwinB-22k-384", "SwinL-22k", "SwinL-22k-384",
            and the small "SwinNano").
        backbone_norm: ResNet trunk norm ("FrozenBN" in the reference; "GN"/"BN" to train from
            scratch); Swin has LayerNorms only and ignores it.
        freeze_at: ResNet only: 2 freezes the stem and res2 (reference); 0 trains everything. Swin
            ignores it, as the published Swin builder does (every Swin parameter trains).
        fpn_norm: FPN conv norm ("" in the reference).
        num_classes: foreground classes K (focal loss, no background column).
        num_proposals: P boxes per image in training, and the default ``num_boxes`` at inference.
        hidden_dim: channels d of the head and of every FPN level.
        dim_feedforward: hidden width of the head's FFN.
        nheads: attention heads of the head's self-attention.
        num_heads: cascade stages of the dynamic head (6).
        dropout: dropout of the head (0.0 in every released config).
        num_cls: Linear-LN-ReLU layers in the classification tower.
        num_reg: Linear-LN-ReLU layers in the regression tower.
        num_dynamic: dynamic parameter sets of DynamicConv; the reference forward uses exactly 2.
        dim_dynamic: inner width D of DynamicConv.
        prior_prob: focal-loss prior; the class-logit bias starts at -log((1 - p) / p).
        snr_scale: signal scale of the diffusion box space (boxes live in [-scale, scale]).
        timesteps: diffusion steps T of the cosine schedule.
        sample_steps: default DDIM steps at inference.
        renewal_threshold: default box-renewal score threshold.
        nms_iou: default IoU threshold of the class-aware NMS.
        use_nms: run the NMS at inference (the reference's USE_NMS).
        pooler_resolution: RoIAlign output size S (S x S bins).
        sampling_ratio: RoIAlign samples per bin side.
        pixel_mean: RGB mean on the 0-255 scale.
        pixel_std: RGB std on the 0-255 scale.
        min_size_test: shortest edge after the test-time resize.
        max_size_test: longest-edge cap of the test-time resize.
        size_divisibility: padded batch height and width are multiples of this.
        class_names: name of each contiguous label; None gives COCO's names when num_classes == 80,
            LVIS v1's when num_classes == 1203, and "class0", "class1", ... otherwise.
        category_ids: dataset category id of each label; None gives COCO's ids when num_classes == 80,
            LVIS v1's (1..1203) when num_classes == 1203, and 0..K-1 otherwise.
        loss: weights and matcher settings of the training criterion.
    """

    backbone: str = "R50"
    backbone_norm: str = "FrozenBN"
    freeze_at: int = 2
    fpn_norm: str = ""
    num_classes: int = 80
    num_proposals: int = 500
    hidden_dim: int = 256
    dim_feedforward: int = 2048
    nheads: int = 8
    num_heads: int = 6
    dropout: float = 0.0
    num_cls: int = 1
    num_reg: int = 3
    num_dynamic: int = 2
    dim_dynamic: int = 64
    prior_prob: float = 0.01
    snr_scale: float = 2.0
    timesteps: int = 1000
    sample_steps: int = 1
    renewal_threshold: float = 0.5
    nms_iou: float = 0.5
    use_nms: bool = True
    pooler_resolution: int = 7
    sampling_ratio: int = 2
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisibility: int = 32
    class_names: tuple[str, ...] | None = None
    category_ids: tuple[int, ...] | None = None
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        positive = ("num_classes", "num_proposals", "hidden_dim", "dim_feedforward", "nheads", "num_heads")
        positive += ("dim_dynamic", "timesteps", "sample_steps", "pooler_resolution", "min_size_test")
        positive += ("max_size_test", "size_divisibility")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % self.nheads:
            raise ValueError(
                f"model hidden_dim ({self.hidden_dim}) must be divisible by nheads ({self.nheads})"
            )
        if self.hidden_dim < 4 or self.hidden_dim % 2:
            raise ValueError(
                f"model hidden_dim must be even and >= 4 (time embedding), got {self.hidden_dim}"
            )
        if self.num_dynamic != 2:
            raise ValueError(
                f"model num_dynamic must be 2 (DynamicConv uses two parameter sets), got {self.num_dynamic}"
            )
        if not 0.0 < self.prior_prob < 1.0:
            raise ValueError(f"model prior_prob must be in (0, 1), got {self.prior_prob}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model dropout must be in [0, 1), got {self.dropout}")
        if self.snr_scale <= 0:
            raise ValueError(f"model snr_scale must be > 0, got {self.snr_scale}")
        if self.sample_steps > self.timesteps:
            raise ValueError(
                f"model sample_steps must be <= timesteps ({self.timesteps}), got {self.sample_steps}"
            )
        if self.sampling_ratio < 0:
            raise ValueError(f"model sampling_ratio must be >= 0, got {self.sampling_ratio}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(
                "model pixel_mean/pixel_std must be 3 values (std > 0), "
                f"got {self.pixel_mean}, {self.pixel_std}"
            )
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        names, ids = _default_classes(self.num_classes)
        if self.class_names is None:
            self.class_names = names
        if self.category_ids is None:
            self.category_ids = ids
        self.class_names = tuple(self.class_names)
        self.category_ids = tuple(int(c) for c in self.category_ids)
        for name in ("class_names", "category_ids"):
            if len(getattr(self, name)) != self.num_classes:
                raise ValueError(
                    f"model {name} must have num_classes ({self.num_classes}) entries, "
                    f"got {len(getattr(self, name))}"
                )
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
