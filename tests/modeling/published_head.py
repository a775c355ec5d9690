"""An independent transcription of the published head (DiffusionDet ``head.py`` at 1efb36d), for parity.

Written from the published code's structure with the same module names, so a diffdet head's
state_dict loads into it. The pooler is detectron2's ``ROIPooler`` logic (level per box by FPN Eqn. 1
in the boxes' dtype, rois cast to the features' dtype, ``torchvision.ops.roi_align`` per level), so this
file shares no code with ``diffdet.ops`` or ``diffdet.modeling``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

SCALE_CLAMP = math.log(100000.0 / 16)


def published_pooler(features, bboxes, output_size, sampling_ratio, min_level):
    """detectron2 ROIPooler (ROIAlignV2) over a list of levels; bboxes [N, nr, 4] -> [N*nr, C, S, S]."""
    n, nr = bboxes.shape[:2]
    boxes = bboxes.reshape(-1, 4)
    idx = torch.arange(n, dtype=boxes.dtype).repeat_interleave(nr)
    rois = torch.cat([idx[:, None], boxes], dim=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=min_level + len(features) - 1).to(torch.int64) - min_level
    out = torch.zeros(
        (rois.shape[0], features[0].shape[1], output_size, output_size), dtype=features[0].dtype
    )
    for level, fmap in enumerate(features):
        inds = torch.nonzero(levels == level, as_tuple=True)[0]
        scale = 1.0 / 2 ** (min_level + level)
        out[inds] = roi_align(
            fmap,
            rois[inds].to(fmap.dtype),
            output_size,
            spatial_scale=scale,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )
    return out


class SinusoidalPositionEmbeddings(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, time):
        half_dim = self.dim // 2
        embeddings = math.log(10000) / (half_dim - 1)
        embeddings = torch.exp(torch.arange(half_dim, device=time.device) * -embeddings)
        embeddings = time[:, None] * embeddings[None, :]
        return torch.cat((embeddings.sin(), embeddings.cos()), dim=-1)


class DynamicConv(nn.Module):
    def __init__(self, hidden_dim, dim_dynamic, pooler_resolution):
        super().__init__()
        self.hidden_dim, self.dim_dynamic = hidden_dim, dim_dynamic
        self.num_params = hidden_dim * dim_dynamic
        self.dynamic_layer = nn.Linear(hidden_dim, 2 * self.num_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.activation = nn.ReLU(inplace=True)
        self.out_layer = nn.Linear(hidden_dim * pooler_resolution**2, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)

    def forward(self, pro_features, roi_features):
        features = roi_features.permute(1, 0, 2)
        parameters = self.dynamic_layer(pro_features).permute(1, 0, 2)
        param1 = parameters[:, :, : self.num_params].view(-1, self.hidden_dim, self.dim_dynamic)
        param2 = parameters[:, :, self.num_params :].view(-1, self.dim_dynamic, self.hidden_dim)
        features = self.activation(self.norm1(torch.bmm(features, param1)))
        features = self.activation(self.norm2(torch.bmm(features, param2)))
        features = self.activation(self.norm3(self.out_layer(features.flatten(1))))
        return features


class RCNNHead(nn.Module):
    def __init__(self, d_model, num_classes, dim_feedforward, nhead, num_cls, num_reg, dim_dynamic, res):
        super().__init__()
        self.d_model = d_model
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.inst_interact = DynamicConv(d_model, dim_dynamic, res)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = (
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
        )
        self.block_time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(d_model * 4, d_model * 2))
        cls_module, reg_module = [], []
        for _ in range(num_cls):
            cls_module += [nn.Linear(d_model, d_model, False), nn.LayerNorm(d_model), nn.ReLU(inplace=True)]
        for _ in range(num_reg):
            reg_module += [nn.Linear(d_model, d_model, False), nn.LayerNorm(d_model), nn.ReLU(inplace=True)]
        self.cls_module = nn.ModuleList(cls_module)
        self.reg_module = nn.ModuleList(reg_module)
        self.class_logits = nn.Linear(d_model, num_classes)
        self.bboxes_delta = nn.Linear(d_model, 4)
        self.bbox_weights = (2.0, 2.0, 1.0, 1.0)

    def forward(self, features, bboxes, pro_features, pooler, time_emb):
        n, nr_boxes = bboxes.shape[:2]
        roi_features = pooler(features, bboxes)
        if pro_features is None:
            pro_features = roi_features.view(n, nr_boxes, self.d_model, -1).mean(-1)
        roi_features = roi_features.view(n * nr_boxes, self.d_model, -1).permute(2, 0, 1)
        pro_features = pro_features.view(n, nr_boxes, self.d_model).permute(1, 0, 2)
        pro_features2 = self.self_attn(pro_features, pro_features, value=pro_features)[0]
        pro_features = self.norm1(pro_features + pro_features2)
        pro_features = (
            pro_features.view(nr_boxes, n, self.d_model)
            .permute(1, 0, 2)
            .reshape(1, n * nr_boxes, self.d_model)
        )
        pro_features2 = self.inst_interact(pro_features, roi_features)
        obj_features = self.norm2(pro_features + pro_features2)
        obj_features2 = self.linear2(F.relu(self.linear1(obj_features)))
        obj_features = self.norm3(obj_features + obj_features2)
        fc_feature = obj_features.transpose(0, 1).reshape(n * nr_boxes, -1)
        scale_shift = torch.repeat_interleave(self.block_time_mlp(time_emb), nr_boxes, dim=0)
        scale, shift = scale_shift.chunk(2, dim=1)
        fc_feature = fc_feature * (scale + 1) + shift
        cls_feature, reg_feature = fc_feature.clone(), fc_feature.clone()
        for layer in self.cls_module:
            cls_feature = layer(cls_feature)
        for layer in self.reg_module:
            reg_feature = layer(reg_feature)
        class_logits = self.class_logits(cls_feature)
        pred_bboxes = self.apply_deltas(self.bboxes_delta(reg_feature), bboxes.view(-1, 4))
        return class_logits.view(n, nr_boxes, -1), pred_bboxes.view(n, nr_boxes, -1), obj_features

    def apply_deltas(self, deltas, boxes):
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.bbox_weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        pred_boxes = torch.zeros_like(deltas)
        pred_boxes[:, 0::4] = pred_ctr_x - 0.5 * pred_w
        pred_boxes[:, 1::4] = pred_ctr_y - 0.5 * pred_h
        pred_boxes[:, 2::4] = pred_ctr_x + 0.5 * pred_w
        pred_boxes[:, 3::4] = pred_ctr_y + 0.5 * pred_h
        return pred_boxes


class DynamicHead(nn.Module):
    def __init__(
        self, num_classes, d_model, dim_feedforward, nhead, num_heads, num_cls, num_reg, dim_dynamic, res=7
    ):
        super().__init__()
        rcnn_head = RCNNHead(d_model, num_classes, dim_feedforward, nhead, num_cls, num_reg, dim_dynamic, res)
        self.head_series = nn.ModuleList([copy.deepcopy(rcnn_head) for _ in range(num_heads)])
        self.time_mlp = nn.Sequential(
            SinusoidalPositionEmbeddings(d_model),
            nn.Linear(d_model, d_model * 4),
            nn.GELU(),
            nn.Linear(d_model * 4, d_model * 4),
        )
        self.res = res

    def forward(self, features, init_bboxes, t, min_level=2):
        time = self.time_mlp(t)
        inter_class_logits, inter_pred_bboxes = [], []
        bboxes = init_bboxes
        proposal_features = None
        pooler = lambda feats, boxes: published_pooler(feats, boxes, self.res, 2, min_level)
        for rcnn_head in self.head_series:
            class_logits, pred_bboxes, proposal_features = rcnn_head(
                features, bboxes, proposal_features, pooler, time
            )
            inter_class_logits.append(class_logits)
            inter_pred_bboxes.append(pred_bboxes)
            bboxes = pred_bboxes.detach()
        return torch.stack(inter_class_logits), torch.stack(inter_pred_bboxes)
