"""ONNX export: a valid standard-ops file whose ONNX Runtime detections equal the PyTorch model's for
the same noise (steps 1 and 2, renewal and batching exercised), and its metadata."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from exportkit import assert_equal_detections, images, noise, run_onnx, tame_detector

import diffdet
from diffdet.errors import InputError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(one_thread):
    return tame_detector()


@pytest.fixture(scope="module")
def two_steps(model, tmp_path_factory):
    """Batch 2, 12 boxes, 2 steps (box renewal between the steps)."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    meta = diffdet.export(model, path, size=(64, 96), steps=2, batch=2)
    return path, meta


def test_file_passes_the_full_checker_with_standard_operators_only(two_steps):
    path, _ = two_steps
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert not proto.functions
    ops = {node.op_type for node in proto.graph.node}
    assert {"RoiAlign", "NonMaxSuppression", "MatMul"} <= ops
    values = [*proto.graph.input, *proto.graph.output]
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
    assert shapes == {
        "images": [2, 3, 64, 96], "noise": [3, 2, 12, 4], "boxes": [2, 24, 4], "scores": [2, 24],
        "labels": [2, 24], "num_detections": [2],
    }  # fmt: skip


def test_two_steps_batch_two_equal_the_model_on_the_same_noise(model, two_steps):
    path, _ = two_steps
    x = images(2)
    expected = model(list(x), steps=2, seed=3)
    assert_equal_detections(run_onnx(path, x, noise(2, 2, 12, seed=3)), expected)


def test_one_step_with_the_resize_in_the_graph_equals_the_model(model, tmp_path):
    """48x80 images are resized to the model's 58x96 inside the graph, and the boxes scaled back.

    ONNX Runtime's uint8 upscaling rounds a few pixels otherwise than torch's (by one level), which
    random weights would amplify; a two-tone image has few pixels where that can happen.
    """
    path = tmp_path / "one.onnx"
    diffdet.export(model, path, size=(48, 80), steps=1, batch=1, max_detections=5)
    x = torch.tensor([30, 120, 200], dtype=torch.uint8).view(1, 3, 1, 1).repeat(1, 1, 48, 80)
    x[:, :, 10:30, 20:50] = 240
    expected = model(list(x), steps=1, seed=0, max_detections=5)
    assert_equal_detections(run_onnx(path, x, noise(1, 1, 12)), expected)


def test_metadata_round_trip(model, two_steps):
    path, meta = two_steps
    read = diffdet.export.read_metadata(path)
    assert read == {k: v for k, v in meta.items() if k not in ("seconds", "bytes")}
    sizes = (read["height"], read["width"], read["batch"], read["num_boxes"], read["steps"])
    assert sizes == (64, 96, 2, 12, 2)
    assert read["max_detections"] == 24 and read["dtype"] == "fp32" and read["ensemble"] == "all"
    assert read["class_names"] == list(model.class_names)
    assert read["category_ids"] == list(model.category_ids)
    assert read["renewal_threshold"] == 0.5 and read["nms_iou"] == 0.5


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_a_damaged_or_foreign_file_is_an_input_error_naming_it(two_steps, tmp_path, damage):
    path, _ = two_steps
    bad = tmp_path / f"{damage}.onnx"
    if damage == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\xff" * 64)
    else:  # a valid ONNX file that diffdet did not write
        proto = onnx.load(str(path))
        del proto.metadata_props[:]
        onnx.save(proto, str(bad))
    with pytest.raises(InputError, match=re.escape(str(bad))):
        diffdet.export.read_metadata(bad)


def test_fp16_graph_equals_the_fp16_model(model, tmp_path):
    """Weights and activations in float16 (boxes, sampler and NMS in float32); RoIAlign samples at the
    boxes rounded to float16, as the op does."""
    path = tmp_path / "half.onnx"
    meta = diffdet.export(model, path, steps=1, batch=1, dtype="fp16")
    assert meta["dtype"] == "fp16"
    x = images(1)
    expected = copy.deepcopy(model).half()(list(x), steps=1, seed=0)
    assert_equal_detections(run_onnx(path, x, noise(1, 1, 12)), expected, atol=3e-3)
