"""``.pt2`` export: ``torch.export.load(...).module()`` detects what the model detects on the same noise;
metadata read without unpickling; options a graph cannot express are input errors naming them."""

from __future__ import annotations

import re
import zipfile

import pytest
import torch
from exportkit import assert_equal_detections, images, noise, tame_detector

import diffdet
from diffdet.config import load_config
from diffdet.errors import InputError
from diffdet.modeling import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(one_thread):
    return tame_detector()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """48x80 images, which the model resizes to 58x96 (the resize is inside the graph)."""
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    meta = diffdet.export(model, path, size=(48, 80), steps=2, batch=1)
    return path, meta


def test_loaded_program_equals_the_model_on_the_same_noise(model, exported):
    path, _ = exported
    program = torch.export.load(str(path)).module()
    x = images(1, 48, 80)
    with torch.no_grad():
        outputs = program(x, noise(2, 1, 12, seed=7))
    assert_equal_detections(outputs, model(list(x), steps=2, seed=7))


def test_quickstart_preset_detector_equals_the_model(tmp_path):
    """The quickstart preset's architecture (trainable BatchNorm, kept as is) with random weights."""
    torch.manual_seed(0)
    model = build_detector(load_config("quickstart").model).eval()
    path = tmp_path / "quickstart.pt2"
    diffdet.export(model, path, steps=2, batch=1)
    x = images(1, 112, 160)
    with torch.no_grad():
        outputs = torch.export.load(str(path)).module()(x, noise(2, 1, 50))
    assert_equal_detections(outputs, model(list(x), steps=2, seed=0))


def test_metadata_round_trip_and_damaged_files(exported, tmp_path):
    path, meta = exported
    read = diffdet.export.read_metadata(path)
    assert read == {k: v for k, v in meta.items() if k not in ("seconds", "bytes")}
    assert read["format"] == "pt2" and read["steps"] == 2 and read["max_detections"] == 24
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(path.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt2"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("foreign/data.json", "{}")
    for bad in (truncated, foreign, tmp_path / "missing.pt2"):
        with pytest.raises(InputError, match=re.escape(str(bad))):
            diffdet.export.read_metadata(bad)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (dict(ensemble="reference"), "ensemble"),
        (dict(batch=0), "batch"),
        (dict(size=(0, 96)), "size"),
        (dict(steps=0), "steps"),
        (dict(num_boxes=0), "num_boxes"),
        (dict(max_detections=25, steps=2), "max_detections"),
        (dict(dtype="bf16"), "dtype"),
        (dict(format="tflite"), "format"),
        (dict(opset=17), "opset"),
        (dict(env="reference"), "DIFFDET_BACKEND"),
    ],
)
def test_options_a_graph_cannot_express_are_input_errors(model, tmp_path, monkeypatch, options, named):
    if "env" in options:
        monkeypatch.setenv("DIFFDET_BACKEND", options.pop("env"))
    with pytest.raises(InputError, match=named):
        diffdet.export(model, tmp_path / "x.onnx", **options)
    assert not list(tmp_path.iterdir()), "nothing written"


def test_unknown_suffix_needs_a_format(model, tmp_path):
    with pytest.raises(InputError, match=r"model\.bin"):
        diffdet.export(model, tmp_path / "model.bin")


def test_graph_without_nms_equals_the_model_without_nms():
    """A model with ``use_nms`` False: the graph keeps the top K candidates (the eager module, which
    the export traces; no export needed)."""
    from diffdet.export.exporter import _export_copy
    from diffdet.export.graph import DetectorGraph, GraphSpec

    model = tame_detector(use_nms=False)
    graph = DetectorGraph(_export_copy(model, torch.float32), GraphSpec(64, 96, 2, 12, 2, 0.5, None, 7))
    x = images(2)
    with torch.no_grad():
        outputs = graph(x, noise(2, 2, 12, seed=4))
    assert_equal_detections(outputs, model(list(x), steps=2, seed=4, max_detections=7))
