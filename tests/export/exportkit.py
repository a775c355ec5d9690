"""Shared pieces of the export tests: small detectors, images, noise, and a detection compare."""

from __future__ import annotations

import json
import warnings

import torch

from diffdet.modeling import ModelConfig, build_detector
from diffdet.modeling.detector import DiffusionDet
from diffdet.modeling.sampler import draw_noise

TINY = dict(
    backbone="R18-half", num_classes=5, num_proposals=12, hidden_dim=32, dim_feedforward=64, nheads=2,
    num_heads=2, dim_dynamic=8, min_size_test=64, max_size_test=96,
)  # fmt: skip
"""A detector whose graph exports in seconds; 64x96 images need no resize."""


def tame_detector(**overrides: object) -> DiffusionDet:
    """A seeded random detector in eval mode, tamed as tests/modeling/detector_kit.py explains: the
    last stage's class bias at -1 (renewal keeps some boxes), box deltas scaled by 0.01 (rounding
    differences stay small through the stages)."""
    torch.manual_seed(0)
    model = build_detector(ModelConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        model.head.head_series[-1].class_logits.bias.fill_(-1.0)
        for stage in model.head.head_series:
            stage.bboxes_delta.weight.mul_(0.01)
    return model


def images(n: int, h: int = 64, w: int = 96) -> torch.Tensor:
    """``n`` seeded uint8 RGB images [n, 3, h, w]."""
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))


def noise(steps: int, batch: int, boxes: int, seed: int = 0) -> torch.Tensor:
    """The sampler's noise for a seed: what ``model(..., seed=seed)`` draws on the CPU."""
    return draw_noise(2 * steps - 1, batch, boxes, torch.device("cpu"), torch.Generator().manual_seed(seed))


def assert_equal_detections(outputs, expected: list[dict], *, atol: float = 1e-3) -> None:
    """Graph outputs (boxes [N, K, 4], scores, labels, num_detections; tensors or arrays) hold the
    model's detections: same count and labels, scores within ``atol``, every box at IoU >= 0.99 with
    its counterpart or, for boxes too small for a stable IoU (random weights make some a thousandth
    of a pixel wide), every coordinate within ``atol`` pixels."""
    from diffdet.modeling.box_ops import box_iou

    boxes, scores, labels, count = (torch.as_tensor(o) for o in outputs)
    assert boxes.shape[0] == len(expected)
    for b, want in enumerate(expected):
        n = int(count[b])
        assert n == len(want["scores"]), f"image {b}: {n} detections, expected {len(want['scores'])}"
        assert n > 0, "a test that compares nothing"
        assert torch.equal(labels[b, :n], want["labels"]), f"image {b}: labels"
        torch.testing.assert_close(scores[b, :n], want["scores"], atol=atol, rtol=0)
        iou = box_iou(boxes[b, :n], want["boxes"]).diagonal()
        near = (boxes[b, :n] - want["boxes"]).abs().amax(dim=1) <= atol
        assert bool(((iou >= 0.99) | near).all()), f"image {b}: IoU {iou.tolist()}"
        assert bool((scores[b, n:] == 0).all() and (boxes[b, n:] == 0).all()), "padding rows are zeros"


def run_onnx(path, x: torch.Tensor, z: torch.Tensor) -> list:
    """ONNX Runtime's outputs of an exported file for images ``x`` and noise ``z`` (one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "noise"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "num_detections"]
    return session.run(None, {"images": x.numpy(), "noise": z.numpy()})


def write_stand_in_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path, metadata: dict):
    """``module`` exported (TorchScript exporter) as an ONNX file with the exported detector's input and
    output names and ``metadata`` as its ``diffdet`` metadata: a stand-in for an exported detector."""
    import onnx  # only where the export tests run (their files skip without it)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, inputs, str(path), input_names=["images", "noise"],
            output_names=["boxes", "scores", "labels", "num_detections"], dynamo=False,
        )  # fmt: skip
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"diffdet": json.dumps(metadata)})
    onnx.save(model, str(path))
    return path
