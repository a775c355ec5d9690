"""Dynamic head: time embedding, box transforms, init, state_dict layout, parity with the published head."""

from __future__ import annotations

import math

import pytest
import torch
from published_head import DynamicHead as PublishedHead
from published_head import published_pooler

from diffdet.modeling.box_ops import (
    SCALE_CLAMP,
    apply_deltas,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
)
from diffdet.modeling.head import DynamicHead
from diffdet.modeling.time_embedding import SinusoidalPositionEmbeddings

TINY = dict(d_model=32, dim_feedforward=64, nhead=2, num_heads=2, dim_dynamic=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_time_embedding_hand_values():
    emb = SinusoidalPositionEmbeddings(8)(torch.tensor([0, 1, 999]))
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # half = 4: f_i = exp(-i ln(10000) / 3) = 1, 10^(-4/3), 10^(-8/3), 1e-4; sin first, then cos.
    freqs = [10 ** (-4 * i / 3) for i in range(4)]
    expect = [math.sin(999 * f) for f in freqs] + [math.cos(999 * f) for f in freqs]
    torch.testing.assert_close(emb[2], torch.tensor(expect), atol=2e-4, rtol=0)
    torch.testing.assert_close(emb[1, :4], torch.tensor([math.sin(f) for f in freqs]))


def test_time_embedding_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        SinusoidalPositionEmbeddings(3)


def test_box_conversions_round_trip_and_hand_values():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    cxcywh = box_xyxy_to_cxcywh(xyxy)
    assert cxcywh.tolist() == [[30.0, 50.0, 40.0, 60.0]]
    assert torch.equal(box_cxcywh_to_xyxy(cxcywh), xyxy)


def test_apply_deltas_weights_and_clamp():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 3, dtype=torch.float64)
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0], [0.0, 0.0, 100.0, 0.5]])
    out = apply_deltas(deltas.to(torch.bfloat16), boxes)
    assert out.dtype == torch.float32  # fp32 box arithmetic for low-precision deltas
    assert out[0].tolist() == [0.0, 0.0, 10.0, 20.0]
    # weights (2, 2, 1, 1): dx = 2 moves the centre by one width, dy = 4 by two heights.
    assert out[1].tolist() == [10.0, 40.0, 20.0, 60.0]
    w = 10.0 * math.exp(SCALE_CLAMP)  # dw clamped at log(100000 / 16)
    h = 20.0 * math.exp(0.5)
    torch.testing.assert_close(out[2], torch.tensor([5 - w / 2, 10 - h / 2, 5 + w / 2, 10 + h / 2]))


def test_iou_and_giou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    # GIoU: enclosing 3x3 = 9, union 7 -> 1/7 - 2/9; disjoint: enclosing 6x2 = 12, union 8 -> -4/12.
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, -1 / 3]]))


def _features(batch: int, channels: int, h: int = 64, w: int = 96) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, channels, h // s, w // s, generator=g) for s in (4, 8, 16, 32)]


def _boxes(batch: int, num: int, h: int = 64, w: int = 96, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    cxcy = torch.rand(batch, num, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(batch, num, 2, generator=g) * torch.tensor([w, h]) * 0.8 + 2
    return torch.cat((cxcy - wh / 2, cxcy + wh / 2), dim=-1).to(dtype)


def test_head_init_follows_reference():
    head = DynamicHead(5, (4, 8, 16, 32), **TINY)
    stage = head.head_series[0]
    torch.testing.assert_close(stage.class_logits.bias, torch.full((5,), -math.log(99.0)))
    assert torch.count_nonzero(stage.self_attn.in_proj_bias) == 0
    w = stage.inst_interact.dynamic_layer.weight
    bound = math.sqrt(6.0 / sum(w.shape))  # xavier_uniform_
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert not torch.equal(head.head_series[0].linear1.weight, head.head_series[1].linear1.weight)


def test_head_state_dict_has_reference_layout():
    head = DynamicHead(80, (4, 8, 16, 32))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert len(shapes) == 256  # REFERENCE.md §3
    assert shapes["time_mlp.1.weight"] == (1024, 256) and shapes["time_mlp.3.weight"] == (1024, 1024)
    prefix = "head_series.5."
    expect = {
        "self_attn.in_proj_weight": (768, 256),
        "self_attn.out_proj.weight": (256, 256),
        "inst_interact.dynamic_layer.weight": (32768, 256),
        "inst_interact.norm1.weight": (64,),
        "inst_interact.out_layer.weight": (256, 12544),
        "linear1.weight": (2048, 256),
        "block_time_mlp.1.weight": (512, 1024),
        "cls_module.0.weight": (256, 256),
        "cls_module.1.bias": (256,),
        "reg_module.6.weight": (256, 256),
        "reg_module.7.weight": (256,),
        "class_logits.weight": (80, 256),
        "bboxes_delta.bias": (4,),
    }
    for key, shape in expect.items():
        assert shapes[prefix + key] == shape, key
    assert "cls_module.0.bias" not in {k.removeprefix(prefix) for k in shapes}
    per_stage = sum(v.numel() for k, v in head.state_dict().items() if k.startswith(prefix))
    assert abs(per_stage / 1e6 - 13.76) < 0.01


def _head_pair():
    head = DynamicHead(5, (4, 8, 16, 32), **TINY).eval()
    published = PublishedHead(5, 32, 64, 2, 2, num_cls=1, num_reg=3, dim_dynamic=8).eval()
    published.load_state_dict(head.state_dict(), strict=True)
    return head, published


@pytest.mark.parametrize("box_dtype", [torch.float32, torch.float64])
def test_head_is_bitwise_the_published_head_given_the_same_pooling(box_dtype, monkeypatch):
    # With detectron2's pooler substituted for the op, every stage must match to the bit: same
    # reshapes, reductions, attention path, FiLM, towers and box transform.
    head, published = _head_pair()
    monkeypatch.setattr(head, "pool", lambda f, b: published_pooler(f, b, 7, 2, 2).flatten(2).transpose(1, 2))
    features, boxes = _features(2, 32), _boxes(2, 12, dtype=box_dtype)
    t = torch.tensor([999, 3])
    with torch.no_grad():
        logits, pred = head(features, boxes, t)
        ref_logits, ref_pred = published(features, boxes, t)
    assert logits.shape == (2, 2, 12, 5) and pred.shape == (2, 2, 12, 4) and pred.dtype == torch.float32
    assert torch.equal(logits, ref_logits), "class_logits"
    assert torch.equal(pred, ref_pred), "pred_boxes"


def test_head_with_the_op_pooler_matches_published_head():
    # roi_align_multilevel differs from torchvision's roi_align by float rounding (~1e-7), which the
    # random-weight box deltas amplify through the stages: compare with a relative tolerance.
    head, published = _head_pair()
    features, boxes = _features(2, 32), _boxes(2, 12)
    t = torch.tensor([999, 3])
    with torch.no_grad():
        pooled = head.pool(features, boxes)
        logits, pred = head(features, boxes, t)
        ref_logits, ref_pred = published(features, boxes, t)
    ref_pooled = published_pooler(features, boxes, 7, 2, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-6, rtol=1e-6, msg="roi features")
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4, msg="class_logits")
    torch.testing.assert_close(pred, ref_pred, atol=1e-3, rtol=1e-4, msg="pred_boxes")


def test_head_backward_reaches_every_parameter():
    head = DynamicHead(5, (4, 8, 16, 32), **TINY)
    features = [f.requires_grad_() for f in _features(1, 32)]
    logits, pred = head(features, _boxes(1, 6), torch.tensor([10]))
    (logits.sum() + pred[-1].sum()).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, missing
    assert any(f.grad is not None and torch.count_nonzero(f.grad) > 0 for f in features), "feature grads"


def test_head_detaches_boxes_between_stages(monkeypatch):
    # With a pooler that ignores the boxes, box gradients can only flow through the box transform:
    # stage 0's output depends on its input boxes, stage 1's must not (its input is detached).
    head = DynamicHead(5, (4, 8, 16, 32), **TINY)
    roi = torch.randn(6, 49, 32)
    monkeypatch.setattr(head, "pool", lambda f, b: roi)
    boxes = _boxes(1, 6).requires_grad_()
    pred = head(_features(1, 32), boxes, torch.tensor([10]))[1]
    (grad0,) = torch.autograd.grad(pred[0].sum(), boxes, retain_graph=True)
    assert torch.count_nonzero(grad0) > 0
    (grad1,) = torch.autograd.grad(pred[1].sum(), boxes, allow_unused=True)
    assert grad1 is None or torch.count_nonzero(grad1) == 0


def test_head_rejects_bad_strides_and_levels():
    with pytest.raises(ValueError, match="feature_strides"):
        DynamicHead(5, (4, 16, 32), **TINY)
    head = DynamicHead(5, (4, 8, 16, 32), **TINY)
    with pytest.raises(ValueError, match="features"):
        head(_features(1, 32)[:3], _boxes(1, 4), torch.tensor([1]))
