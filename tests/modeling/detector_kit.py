"""Shared pieces of the detector tests: a tame random detector, random images, a detection compare."""

from __future__ import annotations

import copy

import torch

from diffdet.modeling import CudaGraphSampler, ModelConfig, build_detector
from diffdet.modeling.backbone import FrozenBatchNorm2d
from diffdet.modeling.detector import DiffusionDet


def tame_detector(cfg: ModelConfig) -> DiffusionDet:
    """A seeded random detector in eval mode whose detections are stable enough to compare.

    Renewal keeps about a third of the boxes with the last stage's class bias at -1 (fresh weights keep
    none). Random box deltas compound exponentially over the stages and steps, so float rounding (batched
    vs single GEMMs) would grow into different boxes; scaling them by 0.01 makes the head as tame as a
    trained one.
    """
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        model.head.head_series[-1].class_logits.bias.fill_(-1.0)
        for stage in model.head.head_series:
            stage.bboxes_delta.weight.mul_(0.01)
    return model


def with_frozen_bn_statistics(model: DiffusionDet) -> DiffusionDet:
    """A copy of ``model`` whose FrozenBNs are not the identity (a fresh model's are), so folding them
    into their convolutions matters."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return model


def random_images(n: int, h: int = 64, w: int = 96) -> list[torch.Tensor]:
    """``n`` seeded uint8 RGB images [3, h, w] (the same ones on every call)."""
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in range(n)]


def assert_same_detections(a: dict, b: dict, atol: float = 1e-4) -> None:
    """Equal labels; scores within ``atol`` and boxes within ``100 * atol`` pixels."""
    assert torch.equal(a["labels"], b["labels"]), "labels"
    torch.testing.assert_close(a["scores"], b["scores"], atol=atol, rtol=0, msg="scores")
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=atol * 100, rtol=0, msg="boxes")


def assert_cuda_graph_replay_equals_eager(model: DiffusionDet) -> None:
    """A CUDA copy of ``model`` replayed from one CUDA graph (batch 2, 20 boxes, 2 steps) detects what
    the same copy detects eagerly with the same generator seed."""
    m = copy.deepcopy(model).cuda().fuse_for_inference()
    graph = CudaGraphSampler(m, batch_size=2, padded_size=(64, 96), num_boxes=20, steps=2)
    images = [im.cuda() for im in random_images(2)]
    got = graph(images, generator=torch.Generator(device="cuda").manual_seed(0))
    expect = m(images, steps=2, generator=torch.Generator(device="cuda").manual_seed(0))
    for a, b in zip(got, expect, strict=True):
        assert_same_detections(a, b, atol=1e-5)
