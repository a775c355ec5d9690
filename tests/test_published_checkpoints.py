"""The seven published checkpoints: each layout, built from REFERENCE.md's key and shape rules, loads
strictly through its preset and round-trips key for key, value for value, dtype included."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import pytest
import torch
from reference_state_dict import make_reference_state_dict, materialize

import diffdet
from diffdet.checkpoint import (
    PRESETS,
    diffdet_to_reference,
    model_payload,
    reference_model_config,
    reference_to_diffdet,
)
from diffdet.modeling.config import COCO_CATEGORY_IDS

PUBLISHED = {
    # release file: (preset, backbone in the reference's terms, classes, proposals)
    "diffdet_coco_res50.pth": ("coco_r50_500boxes", 50, 80, 500),
    "diffdet_coco_res50_300boxes.pth": ("coco_r50_300boxes", 50, 80, 300),
    "diffdet_coco_res101.pth": ("coco_r101_500boxes", 101, 80, 500),
    "diffdet_coco_swinbase.pth": ("coco_swinb", "swinb", 80, 500),
    "diffdet_lvis_res50.pth": ("lvis_r50", 50, 1203, 500),
    "diffdet_lvis_res101.pth": ("lvis_r101", 101, 1203, 500),
    "diffdet_lvis_swinbase.pth": ("lvis_swinb", "swinb", 1203, 500),
}
BACKBONE_NAMES = {50: "R50", 101: "R101", "swinb": "SwinB-22k"}
KEY_COUNTS = {50: 549, 101: 549 + 17 * 3 * 5, "swinb": 641}  # REFERENCE.md §3, §9 (+1 with LVIS, §10)


def _assert_same_state(got, expected):
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


def test_every_release_file_has_a_preset():
    assert {p.filename for p in PRESETS.values()} >= set(PUBLISHED)
    for filename, (preset, *_) in PUBLISHED.items():
        assert PRESETS[preset].filename == filename


@pytest.mark.parametrize("filename", list(PUBLISHED))
def test_published_checkpoint_loads_strictly_and_round_trips(filename, tmp_path, monkeypatch, one_thread):
    preset, depth, num_classes, proposals = PUBLISHED[filename]
    lvis = num_classes == 1203
    # Values share one random pool (cheap to draw and save); distinct per tensor all the same.
    state = materialize(make_reference_state_dict(depth, num_classes, device="meta", fed_loss=lvis), seed=3)
    assert len(state) == KEY_COUNTS[depth] + lvis
    torch.save({"model": state, "__author__": "DiffusionDet", "iteration": 449999}, tmp_path / filename)
    monkeypatch.setenv("DIFFDET_WEIGHTS_DIR", str(tmp_path))

    model = diffdet.load(preset)
    cfg = model.cfg
    assert (cfg.backbone, cfg.num_classes, cfg.num_proposals) == (
        BACKBONE_NAMES[depth],
        num_classes,
        proposals,
    )
    assert cfg.loss.use_fed_loss is lvis and not model.training
    _assert_same_state(model.state_dict(), state)
    if lvis:
        assert model.class_names[0] == "aerosol_can" and model.category_ids == tuple(range(1, 1204))
    else:
        assert model.class_names[0] == "person" and model.category_ids == COCO_CATEGORY_IDS

    # model -> reference layout (what save_reference_checkpoint writes; its file I/O is tested in
    # test_checkpoint.py): the published state_dict again.
    _assert_same_state(diffdet_to_reference(model_payload(model, cfg))["model"], state)
    assert reference_to_diffdet({"model": state}, num_proposals=proposals)[
        "model_config"
    ] == dataclasses.asdict(cfg)


def test_swin_b_and_swin_b_22k_are_one_architecture():
    state = make_reference_state_dict(depth="swinb", device="meta")
    assert reference_model_config(state)["backbone"] == "SwinB-22k"
    config = reference_to_diffdet({"model": state}, backbone="SwinB")["model_config"]
    assert config["backbone"] == "SwinB"
    with pytest.raises(ValueError, match="contradict"):
        reference_to_diffdet({"model": state}, backbone="SwinT")


def test_swin_sizes_outside_the_published_table_are_refused():
    state = make_reference_state_dict(depth="swinb", device="meta")
    cut = OrderedDict(
        (k, v) for k, v in state.items() if not k.startswith("backbone.bottom_up.layers.2.blocks.17")
    )
    with pytest.raises(
        ValueError, match=r"\(128, \(2, 2, 17, 2\), \(4, 8, 16, 32\), 7\) is none of the published"
    ):
        reference_model_config(cut)


def test_fed_loss_weights_must_have_one_entry_per_class():
    state = make_reference_state_dict(depth=50, num_classes=1203, device="meta", fed_loss=True)
    state["criterion.fed_loss_cls_weights"] = torch.ones(80)
    with pytest.raises(ValueError, match="one weight per class"):
        reference_model_config(state)
