"""Set criterion of DiffusionDet (REFERENCE.md §5, ``SetCriterionDynamicK`` with focal loss).

For every head stage (deep supervision) the stage's own predictions are matched to the GT by
:class:`~diffdet.losses.matcher.DynamicKMatcher`; then

    loss_ce   = Σ_{queries, classes} focal(logit, onehot) / N      (unmatched queries: all-zero target)
    loss_bbox = Σ_{matched} |pred/whwh − gt/whwh|_1 / N               (xyxy, image-normalised)
    loss_giou = Σ_{matched} (1 − GIoU(pred, gt)) / N                  (xyxy input-image pixels)

each multiplied by its weight (2, 5, 2 by default). N is the number of matched queries of the stage:
with ``normalization="local"`` this process's count (what the reference does: its all-reduced GT
count is overwritten), with ``"global"`` the count summed over all processes and divided by the world
size, so that DDP's gradient averaging gives the gradient of the loss on the global batch.

With ``use_fed_loss`` (LVIS) the focal term of each stage is masked to the classes
:func:`~diffdet.losses.fed_loss.fed_loss_classes` keeps (one draw per stage, REFERENCE.md §10).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from diffdet.losses.config import LossConfig
from diffdet.losses.fed_loss import fed_loss_classes, fed_loss_mask, fed_loss_weights
from diffdet.losses.matcher import DynamicKMatcher
from diffdet.modeling.box_ops import generalized_box_iou


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise sigmoid focal loss (Lin et al. 2017, Eq. 5; fvcore's ``sigmoid_focal_loss``).

    Args:
        logits (Tensor[...]): raw scores.
        targets (Tensor[...]): binary targets in {0, 1}, same shape.
        alpha (float): weight of positives (1 − alpha for negatives); a negative value disables it.
        gamma (float): focusing exponent.

    Returns:
        Tensor[...]: the unreduced loss, same shape and dtype as ``logits``.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def default_fed_loss_weights(num_classes: int, cfg: LossConfig) -> Tensor:
    """Federated-loss class weights without a training annotation file (REFERENCE.md §10).

    For LVIS v1 (1203 classes) these are the shipped per-class training-image counts raised to
    ``cfg.fed_loss_freq_weight_power``, as detectron2's ``get_fed_loss_cls_weights``; for any other
    class count, uniform weights.

    Returns:
        Tensor[K]: float32 sampling weights, in label order.
    """
    from diffdet.metadata.lvis import LVIS_V1_NUM_CLASSES, lvis_v1_categories

    if num_classes != LVIS_V1_NUM_CLASSES:
        return torch.ones(num_classes)
    counts = torch.tensor([c.image_count for c in lvis_v1_categories()], dtype=torch.float32)
    return fed_loss_weights(counts, cfg.fed_loss_freq_weight_power)


class SetCriterion(torch.nn.Module):
    """Weighted focal / L1 / GIoU losses over all head stages.

    Args:
        num_classes (int): number of foreground classes K.
        matcher (DynamicKMatcher): the per-stage matcher.
        cfg (LossConfig): weights, focal α/γ, deep supervision and normalisation.
    """

    def __init__(self, num_classes: int, matcher: DynamicKMatcher, cfg: LossConfig) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.cfg = cfg
        if cfg.use_fed_loss:
            # Persistent, as in the published code: LVIS checkpoints carry it (REFERENCE.md §10).
            # The trainer overwrites it with the training file's weights (set_fed_loss_weights).
            self.register_buffer("fed_loss_cls_weights", default_fed_loss_weights(num_classes, cfg))

    def set_fed_loss_weights(self, weights: Tensor) -> None:
        """Replace the federated-loss class weights (e.g. by those of the training annotation file).

        Args:
            weights (Tensor[K]): non-negative sampling weight of every class, label order.

        Raises:
            ValueError: the criterion has no federated loss, or ``weights`` is not [K].
        """
        if not self.cfg.use_fed_loss:
            raise ValueError("set_fed_loss_weights needs loss.use_fed_loss=true")
        if weights.shape != (self.num_classes,):
            raise ValueError(f"weights must be [{self.num_classes}], got {tuple(weights.shape)}")
        self.fed_loss_cls_weights.copy_(weights)

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"num_classes={self.num_classes}, weights(ce, bbox, giou)=({c.class_weight}, {c.l1_weight}, "
            f"{c.giou_weight}), deep_supervision={c.deep_supervision}, normalization={c.normalization!r}"
        )

    def _normalizers(self, counts: list[int], device: torch.device) -> list[float]:
        """Per-stage divisor N from the local matched counts (see the module docstring)."""
        local = torch.tensor(counts, dtype=torch.float64, device=device)
        if self.cfg.normalization == "global" and dist.is_available() and dist.is_initialized():
            dist.all_reduce(local)
            local = local / dist.get_world_size()
        return local.clamp(min=1).tolist()

    def _stage_losses(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        matches: list[tuple[Tensor, Tensor]],
        num: float,
    ) -> dict[str, Tensor]:
        """Unweighted ``loss_ce``, ``loss_bbox``, ``loss_giou`` of one stage, divided by ``num``."""
        logits = outputs["pred_logits"].float()  # [B, P, K]
        boxes = outputs["pred_boxes"].float()  # [B, P, 4]
        onehot = torch.zeros_like(logits)
        # Target class per query, K ("no object") when unmatched: what the federated loss draws from.
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        pred, pred_norm, gt, gt_norm = [], [], [], []
        for b, ((selected, gt_index), target) in enumerate(zip(matches, targets, strict=True)):
            if gt_index.numel() == 0:
                continue
            whwh = target["image_size_xyxy"].to(boxes)
            gt_xyxy = target["boxes_xyxy"].to(boxes)[gt_index]  # [M, 4]
            onehot[b, selected, target["labels"][gt_index]] = 1
            target_classes[b, selected] = target["labels"][gt_index]
            pred.append(boxes[b, selected])
            pred_norm.append(boxes[b, selected] / whwh)
            gt.append(gt_xyxy)
            gt_norm.append(gt_xyxy / whwh)
        c = self.cfg
        loss_ce = sigmoid_focal_loss(logits, onehot, c.focal_alpha, c.focal_gamma)
        if c.use_fed_loss:  # one draw per stage over the whole local batch (REFERENCE.md §10)
            kept = fed_loss_classes(
                target_classes.flatten(), c.fed_loss_num_classes, self.num_classes,
                self.fed_loss_cls_weights, c.fed_loss_rule,
            )  # fmt: skip
            loss_ce = loss_ce * fed_loss_mask(kept, self.num_classes)
        loss_ce = loss_ce.sum() / num
        if not pred:
            zero = boxes.sum() * 0  # keeps every box output in the graph (DDP needs used parameters)
            return {"loss_ce": loss_ce, "loss_bbox": zero, "loss_giou": zero}
        pred_t, gt_t = torch.cat(pred), torch.cat(gt)
        loss_bbox = F.l1_loss(torch.cat(pred_norm), torch.cat(gt_norm), reduction="none").sum() / num
        loss_giou = (1 - torch.diag(generalized_box_iou(pred_t, gt_t))).sum() / num
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted losses of the last stage and, with deep supervision, of every earlier stage.

        Args:
            outputs (dict): ``pred_logits`` [B, P, K], ``pred_boxes`` [B, P, 4] (xyxy input-image
                pixels) of the last stage, and ``aux_outputs``, a list of such dicts for the earlier
                stages in stage order.
            targets (list[dict]): per image ``labels`` int64 [G] (contiguous ids), ``boxes_xyxy``
                [G, 4] xyxy input-image pixels, ``image_size_xyxy`` [4] (w, h, w, h).

        Returns:
            dict[str, Tensor]: scalar float32 losses already multiplied by their weights:
            ``loss_ce``, ``loss_bbox``, ``loss_giou`` (last stage) and ``loss_ce_{i}``,
            ``loss_bbox_{i}``, ``loss_giou_{i}`` for earlier stage i. Their sum is the training loss.
        """
        stages: list[tuple[str, dict]] = [("", outputs)]
        if self.cfg.deep_supervision:
            stages += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        for _, stage in stages:
            num_classes = stage["pred_logits"].shape[-1]
            if num_classes != self.num_classes:
                raise ValueError(f"pred_logits must have {self.num_classes} classes, got {num_classes}")
        matches = [self.matcher(stage, targets) for _, stage in stages]
        counts = [sum(int(gt_index.numel()) for _, gt_index in m) for m in matches]
        normalizers = self._normalizers(counts, outputs["pred_logits"].device)
        weights = {"loss_ce": self.cfg.class_weight, "loss_bbox": self.cfg.l1_weight}
        weights["loss_giou"] = self.cfg.giou_weight
        losses: dict[str, Tensor] = {}
        for (suffix, stage), match, num in zip(stages, matches, normalizers, strict=True):
            for name, value in self._stage_losses(stage, targets, match, num).items():
                losses[name + suffix] = weights[name] * value
        return losses
