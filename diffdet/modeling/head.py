"""The dynamic head: 6 cascaded ``RCNNHead`` stages conditioned on the timestep (REFERENCE.md §2).

Module and parameter names mirror the reference's state_dict (``head.time_mlp.*``,
``head.head_series.{k}.*``). The RoI pooler is stateless: each stage calls
:func:`diffdet.ops.roi_align_multilevel` (level per box inside the op, bin-major output).

Dtypes: the head runs in its parameters' dtype (fp32, or fp16/bf16 after ``model.to(dtype)``); box
coordinates stay float32 throughout (pooling inputs, deltas, outputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdet.modeling.box_ops import BBOX_WEIGHTS, SCALE_CLAMP, apply_deltas
from diffdet.modeling.dynamic_conv_layer import DynamicConv
from diffdet.modeling.time_embedding import SinusoidalPositionEmbeddings
from diffdet.ops import roi_align_multilevel

CANONICAL_BOX_SIZE = 224.0  # FPN Eqn. 1: a 224x224 box maps to the canonical level
CANONICAL_LEVEL = 4


def _tower(d_model: int, layers: int) -> nn.Sequential:
    """``layers`` x [Linear(d, d, bias=False), LayerNorm(d), ReLU] (cls_module / reg_module)."""
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(d_model, d_model, bias=False), nn.LayerNorm(d_model), nn.ReLU(inplace=True)]
    return nn.Sequential(*modules)


class RCNNHead(nn.Module):
    """One stage: RoI pooling, self-attention, dynamic conv, FFN, time FiLM, towers, box deltas.

    Args:
        d_model: channels C (256).
        num_classes: K (class logits; sigmoid/focal, no background column).
        dim_feedforward: FFN width (2048).
        nhead: attention heads (8).
        dropout: dropout probability (0.0 in the reference).
        num_cls: cls tower depth (1).
        num_reg: reg tower depth (3).
        dim_dynamic: DynamicConv width D (64).
        num_dynamic: DynamicConv parameter sets (2).
        pooler_resolution: S (7).
        scale_clamp: clamp of dw, dh in :func:`apply_deltas`.
        bbox_weights: delta weights (2, 2, 1, 1).
    """

    def __init__(
        self,
        d_model: int,
        num_classes: int,
        dim_feedforward: int = 2048,
        nhead: int = 8,
        dropout: float = 0.0,
        num_cls: int = 1,
        num_reg: int = 3,
        dim_dynamic: int = 64,
        num_dynamic: int = 2,
        pooler_resolution: int = 7,
        scale_clamp: float = SCALE_CLAMP,
        bbox_weights: Sequence[float] = BBOX_WEIGHTS,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = dropout
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.inst_interact = DynamicConv(d_model, dim_dynamic, pooler_resolution**2, num_dynamic)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.block_time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(d_model * 4, d_model * 2))
        self.cls_module = _tower(d_model, num_cls)
        self.reg_module = _tower(d_model, num_reg)
        self.class_logits = nn.Linear(d_model, num_classes)
        self.bboxes_delta = nn.Linear(d_model, 4)
        self.scale_clamp = scale_clamp
        self.bbox_weights = tuple(bbox_weights)

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x

    def forward(
        self, roi_features: Tensor, boxes: Tensor, pro_features: Tensor | None, time_emb: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run the stage on pooled RoIs.

        Args:
            roi_features (Tensor[B*P, S*S, C]): RoI features of ``boxes``, bin-major (bins row-major).
            boxes (Tensor[B, P, 4]): the stage's input boxes, xyxy input-image pixels, float32 (or
                float64 at stage 0).
            pro_features (Tensor[B*P, C] | None): previous stage's object features; None at stage 0,
                where the mean of the RoI over its bins is used.
            time_emb (Tensor[B, 4C]): output of ``time_mlp``.

        Returns:
            (class_logits [B, P, K], pred_boxes [B, P, 4] xyxy pixels float32, obj_features [B*P, C]),
            where ``obj_features`` (taken before the time FiLM) feeds the next stage.
        """
        n, nr = boxes.shape[:2]
        d = self.d_model
        if pro_features is None:
            # Mean over the bins of the [C, S*S] layout, as the reference reduces (bitwise equal sums).
            pro_features = roi_features.transpose(1, 2).contiguous().mean(-1)  # [K, C]

        # Self-attention across the proposals of each image: sequence (P, B, C), q = k = v, post-norm.
        # need_weights stays True (the default, as the reference): the explicit softmax(QK^T)V path,
        # whose rounding differs from the fused SDPA kernel that need_weights=False selects.
        x = pro_features.view(n, nr, d).permute(1, 0, 2)
        x = self.norm1(x + self._drop(self.self_attn(x, x, value=x)[0]))
        x = x.permute(1, 0, 2).reshape(n * nr, d)  # [K, C], image-major

        x = self.norm2(x + self._drop(self.inst_interact(x, roi_features)))
        obj_features = self.norm3(x + self._drop(self.linear2(self._drop(F.relu(self.linear1(x))))))

        # Time FiLM: fc = x * (scale + 1) + shift, one (scale, shift) per image.
        scale, shift = self.block_time_mlp(time_emb).chunk(2, dim=1)  # [B, C] each
        fc = (obj_features.view(n, nr, d) * (scale[:, None] + 1) + shift[:, None]).view(n * nr, d)

        class_logits = self.class_logits(self.cls_module(fc))
        deltas = self.bboxes_delta(self.reg_module(fc))
        pred_boxes = apply_deltas(deltas, boxes.reshape(-1, 4), self.bbox_weights, self.scale_clamp)
        return class_logits.view(n, nr, -1), pred_boxes.view(n, nr, 4), obj_features


class DynamicHead(nn.Module):
    """Time MLP plus ``num_heads`` cascaded :class:`RCNNHead` stages (boxes detached between stages).

    Args:
        num_classes: K.
        feature_strides: strides of the pooled feature maps, finest first (4, 8, 16, 32 for p2..p5);
            consecutive powers of 2.
        d_model: channels C of the head and of every feature map.
        dim_feedforward, nhead, dropout, num_cls, num_reg, dim_dynamic, num_dynamic: see RCNNHead.
        num_heads: number of stages (6).
        pooler_resolution: RoIAlign output size S (7).
        sampling_ratio: RoIAlign samples per bin side (2).
        prior_prob: focal prior; the class-logit bias starts at -log((1 - p) / p) = -4.595.

    Raises:
        ValueError: ``feature_strides`` are not consecutive powers of 2.
    """

    def __init__(
        self,
        num_classes: int,
        feature_strides: Sequence[int],
        d_model: int = 256,
        dim_feedforward: int = 2048,
        nhead: int = 8,
        dropout: float = 0.0,
        num_heads: int = 6,
        num_cls: int = 1,
        num_reg: int = 3,
        dim_dynamic: int = 64,
        num_dynamic: int = 2,
        pooler_resolution: int = 7,
        sampling_ratio: int = 2,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        levels = [math.log2(s) for s in feature_strides]
        if not levels or any(lv != int(lv) or lv != levels[0] + i for i, lv in enumerate(levels)):
            raise ValueError(f"feature_strides must be consecutive powers of 2, got {tuple(feature_strides)}")
        self.min_level = int(levels[0])
        self.num_levels = len(levels)
        self.pooler_resolution = pooler_resolution
        self.sampling_ratio = sampling_ratio
        self.num_classes = num_classes
        self.d_model = d_model
        self.head_series = nn.ModuleList(
            RCNNHead(
                d_model,
                num_classes,
                dim_feedforward=dim_feedforward,
                nhead=nhead,
                dropout=dropout,
                num_cls=num_cls,
                num_reg=num_reg,
                dim_dynamic=dim_dynamic,
                num_dynamic=num_dynamic,
                pooler_resolution=pooler_resolution,
            )
            for _ in range(num_heads)
        )
        time_dim = d_model * 4
        self.time_mlp = nn.Sequential(
            SinusoidalPositionEmbeddings(d_model),
            nn.Linear(d_model, time_dim),
            nn.GELU(),
            nn.Linear(time_dim, time_dim),
        )
        self.bias_value = -math.log((1 - prior_prob) / prior_prob)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The reference's init: xavier_uniform_ on every matrix, then the focal prior on any parameter
        whose last dim is K or K + 1 (in practice ``class_logits.bias``)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            if p.shape[-1] in (self.num_classes, self.num_classes + 1):
                nn.init.constant_(p, self.bias_value)

    def pool(self, features: Sequence[Tensor], boxes: Tensor) -> Tensor:
        """RoIAlign (aligned, level per box by FPN Eqn. 1) of every box on its image's pyramid.

        Args:
            features: ``num_levels`` maps [B, C, Hl, Wl], finest first.
            boxes (Tensor[B, P, 4]): xyxy input-image pixels (unclipped), float32 or float64 (levels
                are assigned in this dtype; sampling uses the boxes rounded to the features' dtype).

        Returns:
            Tensor[B*P, S*S, C]: bin-major pooled features in the features' dtype, image-major rows.
        """
        n, nr = boxes.shape[:2]
        batch_idx = torch.arange(n, device=boxes.device).repeat_interleave(nr)
        return roi_align_multilevel(
            list(features),
            boxes.reshape(n * nr, 4),
            batch_idx,
            output_size=self.pooler_resolution,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
            canonical_box_size=CANONICAL_BOX_SIZE,
            canonical_level=CANONICAL_LEVEL,
            min_level=self.min_level,
            bin_major=True,
        )

    def time_embedding(self, t: Tensor) -> Tensor:
        """``time_mlp(t)`` with the sinusoidal part in float32, the MLP in the parameters' dtype.

        Args:
            t (Tensor[B]): timesteps, int64 (or floating).

        Returns:
            Tensor[B, 4C].
        """
        emb = self.time_mlp[0](t).to(self.time_mlp[1].weight.dtype)
        return self.time_mlp[1:](emb)

    def forward(self, features: Sequence[Tensor], boxes: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Refine boxes through every stage.

        Args:
            features: the pyramid maps [B, C, Hl, Wl] (p2..p5), finest first.
            boxes (Tensor[B, P, 4]): stage-0 boxes, xyxy input-image pixels. float64 boxes (training
                and later sampling steps in the reference) keep their dtype for the pooler's level
                assignment, as detectron2's does; the box transform casts them to float32. fp16/bf16
                boxes are promoted to float32.
            t (Tensor[B]): int64 timestep per image.

        Returns:
            (class_logits [num_heads, B, P, K] in the head's dtype,
            pred_boxes [num_heads, B, P, 4] xyxy input-image pixels, float32).
            Stage k > 0 starts from stage k - 1's boxes, detached.
        """
        if len(features) != self.num_levels:
            raise ValueError(f"features must have {self.num_levels} levels, got {len(features)}")
        time_emb = self.time_embedding(t)
        if boxes.dtype not in (torch.float32, torch.float64):
            boxes = boxes.float()
        pro_features = None
        all_logits, all_boxes = [], []
        for stage in self.head_series:
            roi = self.pool(features, boxes)
            logits, pred_boxes, pro_features = stage(roi, boxes, pro_features, time_emb)
            all_logits.append(logits)
            all_boxes.append(pred_boxes)
            boxes = pred_boxes.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)
