"""SimOTA-style dynamic-k matcher of DiffusionDet (REFERENCE.md §5, ``HungarianMatcherDynamicK``).

For each image, every (query, GT) pair gets the cost

    cost = 5·L1(pred/whwh, gt/whwh) + 2·(focal_pos − focal_neg)[:, gt_label] + 2·(−GIoU)
           + 100·¬(centre in box ∧ centre in 2.5·GT-size window) + 10000·¬fg(query)

(the weights are the loss weights of :class:`~diffdet.losses.config.LossConfig`). Each GT j then takes
its k_j cheapest queries, k_j = max(1, int(Σ top-ota_k IoUs of GT j)). A query picked by several GTs
keeps only the GT of lowest cost over its whole row, and GTs left without a query get the cheapest
unmatched query in a loop that, like the reference, re-resolves conflicts with the mask computed
*before* the loop. One GT may own several queries (one-to-many).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from diffdet.losses.config import LossConfig
from diffdet.modeling.box_ops import box_iou, box_xyxy_to_cxcywh, generalized_box_iou

CENTER_RADIUS = 2.5  # in units of the GT box size (reference `get_in_boxes_info`)
NOT_IN_BOX_AND_CENTER_COST = 100.0
NOT_FG_COST = 10000.0
MATCHED_QUERY_PENALTY = 100000.0
MAX_REPAIR_ROUNDS = 1000
"""Rounds of the reference's "every GT gets a query" loop before it is cut. The reference loops
forever on some cost matrices (seen with random costs: 22 of 200 with 14 GT boxes for 8 queries, and
near-square ones with fewer GT boxes than queries), hanging training; the cut turns that into a
warning. Matrices that settle within the cut get the reference's result."""


def in_boxes_info(pred_xyxy: Tensor, gt_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Centre prior of the reference: which predicted centres fall inside or near each GT.

    Args:
        pred_xyxy (Tensor[P, 4]): predicted boxes, xyxy input-image pixels.
        gt_xyxy (Tensor[G, 4]): GT boxes, xyxy input-image pixels.

    Returns:
        ``(fg, in_box_and_center)``: bool [P], query centre inside any GT box or any GT's centre
        window; bool [P, G], centre inside GT j's box and inside its window. The window of GT j is
        its centre ± 2.5·(w, h); every inequality is strict.
    """
    centre = box_xyxy_to_cxcywh(pred_xyxy)[:, :2]  # [P, 2]
    cx, cy = centre[:, 0:1], centre[:, 1:2]  # [P, 1]
    x1, y1, x2, y2 = gt_xyxy.unbind(-1)  # [G] each
    in_box = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)  # [P, G]
    gcx, gcy = (x1 + x2) / 2, (y1 + y2) / 2
    rx, ry = CENTER_RADIUS * (x2 - x1), CENTER_RADIUS * (y2 - y1)
    in_center = (cx > gcx - rx) & (cx < gcx + rx) & (cy > gcy - ry) & (cy < gcy + ry)  # [P, G]
    fg = in_box.any(dim=1) | in_center.any(dim=1)  # [P]
    return fg, in_box & in_center


def dynamic_k_matching(cost: Tensor, ious: Tensor, ota_k: int) -> tuple[Tensor, Tensor]:
    """Select queries for each GT from a cost matrix (reference ``dynamic_k_matching``).

    Args:
        cost (Tensor[P, G]): matching cost, lower is better. Modified in place (as the reference).
        ious (Tensor[P, G]): IoU of every query with every GT.
        ota_k (int): number of top IoUs summed per GT to get its k (at most P are used).

    Returns:
        ``(selected, gt_index)``: bool [P], the queries that are matched; int64 [M], the GT index
        of each selected query in increasing query order (M = selected.sum()). Where the
        reference would loop forever, the loop stops after :data:`MAX_REPAIR_ROUNDS` rounds with a
        RuntimeWarning and the GT boxes still without a query go unsupervised in this stage.
    """
    num_queries, _ = cost.shape
    matching = torch.zeros_like(cost)  # [P, G]
    topk_ious = torch.topk(ious, min(ota_k, num_queries), dim=0).values  # [k, G]
    dynamic_ks = torch.clamp(topk_ious.sum(0).int(), min=1)  # [G]
    # Each GT takes its k_j cheapest queries: rank every column once, keep ranks < k_j.
    order = cost.argsort(dim=0, stable=True)  # [P, G]
    rank_ok = torch.arange(num_queries, device=cost.device)[:, None] < dynamic_ks[None, :]  # [P, G]
    matching.scatter_(0, order, rank_ok.to(matching.dtype))

    multi = matching.sum(1) > 1  # [P]; stale inside the loop below, as in the reference
    if multi.any():
        matching[multi] = 0
        matching[multi, cost[multi].argmin(dim=1)] = 1

    rounds = 0
    while (matching.sum(0) == 0).any():
        rounds += 1
        if rounds > MAX_REPAIR_ROUNDS:
            warnings.warn(
                f"dynamic-k matching gave up after {MAX_REPAIR_ROUNDS} rounds: "
                f"{int((matching.sum(0) == 0).sum())} of {matching.shape[1]} GT boxes keep no query "
                f"(the reference would loop forever; more proposals than GT boxes make it rarer)",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        cost[matching.sum(1) > 0] += MATCHED_QUERY_PENALTY
        for gt_idx in torch.nonzero(matching.sum(0) == 0).squeeze(1):
            matching[cost[:, gt_idx].argmin(), gt_idx] = 1
        if (matching.sum(1) > 1).any():
            matching[multi] = 0
            matching[multi, cost[multi].argmin(dim=1)] = 1

    selected = matching.sum(1) > 0  # [P]
    gt_index = matching[selected].argmax(dim=1)  # [M]
    return selected, gt_index


class DynamicKMatcher(torch.nn.Module):
    """Per-image SimOTA matching of predictions to GT (no gradient).

    Args:
        cost_class (float): weight of the focal class cost.
        cost_bbox (float): weight of the L1 cost on image-normalised xyxy boxes.
        cost_giou (float): weight of the −GIoU cost.
        focal_alpha (float): α of the focal class cost.
        focal_gamma (float): γ of the focal class cost.
        ota_k (int): top IoUs summed per GT for its dynamic k.
    """

    def __init__(
        self,
        cost_class: float,
        cost_bbox: float,
        cost_giou: float,
        focal_alpha: float,
        focal_gamma: float,
        ota_k: int,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou cannot all be 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.ota_k = ota_k

    @classmethod
    def from_config(cls, cfg: LossConfig) -> DynamicKMatcher:
        """The matcher of the reference: costs weighted like the losses."""
        return cls(
            cfg.class_weight, cfg.l1_weight, cfg.giou_weight, cfg.focal_alpha, cfg.focal_gamma, cfg.ota_k
        )

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, ota_k={self.ota_k}"
        )

    def cost_matrix(self, logits: Tensor, pred_xyxy: Tensor, target: dict[str, Tensor]) -> Tensor:
        """The full matching cost of one image, including the centre-prior penalties.

        Args:
            logits (Tensor[P, K]): class logits of the queries.
            pred_xyxy (Tensor[P, 4]): predicted boxes, xyxy input-image pixels.
            target (dict): ``labels`` int64 [G], ``boxes_xyxy`` [G, 4] xyxy input-image pixels,
                ``image_size_xyxy`` [4] (w, h, w, h) of the input image.

        Returns:
            Tensor[P, G]: the cost, lower is better.
        """
        labels, gt_xyxy, whwh = target["labels"], target["boxes_xyxy"], target["image_size_xyxy"]
        prob = logits.sigmoid()  # [P, K]
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-8).log())
        pos = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
        cost_class = pos[:, labels] - neg[:, labels]  # [P, G]
        cost_bbox = torch.cdist(pred_xyxy / whwh, gt_xyxy / whwh, p=1)  # [P, G]
        cost_giou = -generalized_box_iou(pred_xyxy, gt_xyxy)  # [P, G]
        fg, in_box_and_center = in_boxes_info(pred_xyxy, gt_xyxy)
        cost = (
            self.cost_bbox * cost_bbox
            + self.cost_class * cost_class
            + self.cost_giou * cost_giou
            + NOT_IN_BOX_AND_CENTER_COST * (~in_box_and_center)
        )
        cost[~fg] += NOT_FG_COST
        return cost

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match one stage's predictions to the GT of every image.

        Args:
            outputs (dict): ``pred_logits`` [B, P, K] and ``pred_boxes`` [B, P, 4] (xyxy input-image
                pixels) of one head stage.
            targets (list[dict]): B dicts as in :meth:`cost_matrix`.

        Returns:
            list of B ``(selected, gt_index)`` pairs: bool [P] mask of matched queries and int64 [M]
            GT index per matched query (increasing query order). Images without GT match nothing.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"targets must have one entry per image ({logits.shape[0]}), got {len(targets)}")
        matches = []
        for logits_i, boxes_i, target in zip(logits.float(), boxes.float(), targets, strict=True):
            num_queries = logits_i.shape[0]
            if target["labels"].numel() == 0:
                none = torch.zeros(num_queries, dtype=torch.bool, device=logits_i.device)
                matches.append((none, torch.zeros(0, dtype=torch.int64, device=logits_i.device)))
                continue
            cost = self.cost_matrix(logits_i, boxes_i, target)
            ious = box_iou(boxes_i, target["boxes_xyxy"])
            matches.append(dynamic_k_matching(cost, ious, self.ota_k))
        return matches
