"""Loss hyper-parameters (REFERENCE.md §1 and §5).

The defaults are the reference's: focal classification loss (α 0.25, γ 2), L1 and GIoU box losses
weighted 2 / 5 / 2 on every stage, the SimOTA-style dynamic-k matcher with top-5 IoU sums, and deep
supervision over all head stages.
"""

from __future__ import annotations

from dataclasses import dataclass

NORMALIZATIONS = ("global", "local")
FED_LOSS_RULES = ("published", "corrected")


@dataclass
class LossConfig:
    """Weights and matcher settings of the DiffusionDet set criterion.

    Attributes:
        class_weight: weight of the sigmoid focal classification loss (reference CLASS_WEIGHT).
        giou_weight: weight of the 1 - GIoU loss (reference GIOU_WEIGHT).
        l1_weight: weight of the L1 loss on image-normalised xyxy boxes (reference L1_WEIGHT).
        focal_alpha: α of the focal loss and of the matcher's class cost.
        focal_gamma: γ of the focal loss and of the matcher's class cost.
        ota_k: number of top IoUs summed to get each GT's dynamic k (reference OTA_K).
        use_fed_loss: federated loss (LVIS, REFERENCE.md §10): mask the focal loss to the GT classes
            plus negatives sampled by frequency weight. The criterion then carries the weights as
            its buffer ``fed_loss_cls_weights`` [K] (in the published LVIS checkpoints too).
        fed_loss_num_classes: classes the federated loss keeps per draw (50, hard-coded in the
            published code).
        fed_loss_freq_weight_power: exponent applied to each class's training-image count to get
            its sampling weight (detectron2's FED_LOSS_FREQ_WEIGHT_POWER, 0.5).
        fed_loss_rule: ``"published"`` keeps ``fed_loss_num_classes`` classes counting "no object",
            so 49 real classes (the published quirk); ``"corrected"`` keeps 50 real classes.
        deep_supervision: add the loss of every earlier head stage (``loss_*_{i}`` terms).
        normalization: ``"global"`` divides by the number of matched queries summed over all
            processes and divided by the world size (what the reference meant to do);
            ``"local"`` divides by this process's matched count (what the reference does).
    """

    class_weight: float = 2.0
    giou_weight: float = 2.0
    l1_weight: float = 5.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    ota_k: int = 5
    use_fed_loss: bool = False
    fed_loss_num_classes: int = 50
    fed_loss_freq_weight_power: float = 0.5
    fed_loss_rule: str = "published"  # "published" (49 real classes) | "corrected" (50)
    deep_supervision: bool = True
    normalization: str = "global"  # "global" (all-reduced matched count) | "local" (reference)

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"loss normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.ota_k < 1:
            raise ValueError(f"loss ota_k must be >= 1, got {self.ota_k}")
        if self.fed_loss_rule not in FED_LOSS_RULES:
            raise ValueError(
                f"loss fed_loss_rule must be one of {FED_LOSS_RULES}, got {self.fed_loss_rule!r}"
            )
        if self.fed_loss_num_classes < 1:
            raise ValueError(f"loss fed_loss_num_classes must be >= 1, got {self.fed_loss_num_classes}")
