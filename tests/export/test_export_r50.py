"""ONNX export of the published R50-FPN trunk: ONNX Runtime equals the model (its own file: the R50
trunk's 100 MB of weights make it the costliest export test)."""

from __future__ import annotations

import pytest
from exportkit import assert_equal_detections, images, noise, run_onnx, tame_detector

import diffdet

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_published_r50_trunk_with_one_head_stage_equals_the_model(tmp_path):
    """The published R50-FPN trunk (bottlenecks, FrozenBN folded at export) and stage 0 of the head
    (more stages of random weights amplify rounding chaotically)."""
    model = tame_detector(backbone="R50", num_heads=1, num_classes=80)
    path = tmp_path / "r50.onnx"
    diffdet.export(model, path, steps=2, batch=1)
    x = images(1)
    expected = model(list(x), steps=2, seed=1)
    assert_equal_detections(run_onnx(path, x, noise(2, 1, 12, seed=1)), expected)
