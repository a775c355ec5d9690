"""An LVIS model's class names and category ids reach ``diffdet detect``'s pictures and results JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from diffdet.inference.images import run_detect
from diffdet.metadata.lvis import lvis_v1_categories
from diffdet.modeling import ModelConfig, build_detector

TINY_LVIS = dict(
    backbone="R18-half", num_classes=1203, hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2,
    dim_dynamic=8, num_proposals=10, min_size_test=64, max_size_test=96,
)  # fmt: skip


@pytest.fixture(scope="module")
def lvis_model(one_thread):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(**TINY_LVIS)).eval()
    with torch.no_grad():
        for stage in model.head.head_series:
            stage.class_logits.weight.zero_()
            stage.class_logits.bias.fill_(-20.0)
            # labels 0 (aerosol_can, id 1) and 11 (id 12; COCO has no id 12) win every box
            stage.class_logits.bias[[0, 11]] = torch.tensor([6.0, 5.0])
    return model


def test_lvis_names_reach_the_pictures_and_ids_the_results(lvis_model, tmp_path, monkeypatch):
    categories = lvis_v1_categories()
    assert (
        lvis_model.class_names[0] == "aerosol_can" and lvis_model.category_ids[11] == categories[11].id == 12
    )
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(folder / "000000000007.png")
    drawn: list[str] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    path = run_detect(
        lvis_model, [folder / "000000000007.png"], tmp_path / "out", score_thr=0.5, progress=False, seed=0
    )
    results = json.loads(path.read_text())
    assert (
        results and {r["category_id"] for r in results} <= {1, 12} and {r["image_id"] for r in results} == {7}
    )
    assert any(r["category_id"] == 1 for r in results)
    assert any(text.startswith("aerosol_can ") for text in drawn), drawn
    names = {categories[11].name, "aerosol_can"}
    assert all(text.rsplit(" ", 1)[0] in names for text in drawn), drawn
