"""Checkpoints: reference layout (549 keys), diffdet layout, lossless conversion, diffdet.load, errors."""

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_state_dict import (
    DIFFUSION_BUFFERS,
    make_reference_state_dict,
    reference_backbone_shapes,
    reference_diffusion_buffers,
)

import diffdet
from diffdet.checkpoint import (
    CheckpointMismatchError,
    atomic_save,
    detect_layout,
    diffdet_to_reference,
    load_state_dict_strict,
    model_from_checkpoint,
    read_checkpoint,
    reference_model_config,
    reference_to_diffdet,
    save_checkpoint,
    save_reference_checkpoint,
    torch_load,
)
from diffdet.modeling import ModelConfig, build_detector
from diffdet.modeling.backbone import build_backbone, fold_frozen_batchnorm
from diffdet.modeling.diffusion import schedule_buffers

SMALL = {"backbone": "R18", "hidden_dim": 64, "dim_feedforward": 128, "nheads": 4, "num_heads": 2}
SMALL |= {"dim_dynamic": 16, "num_classes": 3, "num_proposals": 10}


def _assert_same_state(got, expected):
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


@pytest.fixture(scope="module")
def reference_state():
    return make_reference_state_dict(depth=50, num_classes=80, seed=0)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_detector(ModelConfig(**SMALL))


def test_synthetic_reference_has_the_documented_keys(reference_state):
    # REFERENCE.md §3: 549 keys = 12 float64 buffers + 281 backbone + 256 head.
    assert len(reference_state) == 549
    assert sum(k.startswith("backbone.") for k in reference_state) == 281
    assert sum(k.startswith("head.") for k in reference_state) == 256
    assert [k for k in reference_state if reference_state[k].dtype == torch.float64] == list(
        DIFFUSION_BUFFERS
    )
    assert len(make_reference_state_dict(depth=101, device="meta")) == 549 + 17 * 3 * 5


@pytest.mark.parametrize("depth", [50, 101])
def test_backbone_names_and_shapes_match_the_reference(depth):
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in build_backbone(f"R{depth}").state_dict().items()}
    assert list(ours.items()) == list(reference_backbone_shapes(depth).items())


def test_schedule_buffers_match_the_reference_formulas():
    ours, ref = schedule_buffers(1000), reference_diffusion_buffers()
    for name in DIFFUSION_BUFFERS:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-12, atol=0, msg=name)


def test_reference_loads_strictly_and_round_trips(reference_state, tmp_path, monkeypatch):
    checkpoint = {"model": reference_state, "__author__": "DiffusionDet", "iteration": np.int64(449999)}
    path = tmp_path / "diffdet_coco_res50_300boxes.pth"  # the release file of this preset
    torch.save(checkpoint, path)
    loaded = torch_load(path)  # numpy scalar beside the weights: admitted under weights_only
    assert detect_layout(loaded) == "reference" and loaded["iteration"] == 449999

    monkeypatch.setenv("DIFFDET_WEIGHTS_DIR", str(tmp_path))
    model = diffdet.load("coco_r50_300boxes")
    assert (model.cfg.backbone, model.cfg.num_classes, model.cfg.num_proposals) == ("R50", 80, 300)
    assert not model.training
    _assert_same_state(model.state_dict(), reference_state)

    # reference -> model -> reference file: key for key, value for value, dtype included.
    out = save_reference_checkpoint(tmp_path / "exported.pth", model, model.cfg)
    _assert_same_state(torch_load(out)["model"], reference_state)
    # reference -> diffdet layout -> reference (files of the diffdet layout: see the small-model test).
    ours = reference_to_diffdet(loaded, num_proposals=300)
    assert ours["model_config"]["num_proposals"] == 300
    _assert_same_state(diffdet_to_reference(ours)["model"], reference_state)
    _assert_same_state(read_checkpoint(path)["model"], reference_state)


def test_reference_model_config_reads_the_shapes(reference_state):
    config = reference_model_config(reference_state)
    assert config == {
        "backbone": "R50",
        "num_classes": 80,
        "hidden_dim": 256,
        "dim_feedforward": 2048,
        "num_heads": 6,
        "num_cls": 1,
        "num_reg": 3,
        "dim_dynamic": 64,
        "pooler_resolution": 7,
        "timesteps": 1000,
    }
    lvis_r101 = reference_model_config(make_reference_state_dict(depth=101, num_classes=1203, device="meta"))
    assert (lvis_r101["backbone"], lvis_r101["num_classes"]) == ("R101", 1203)


def test_reference_conversion_errors(reference_state):
    with pytest.raises(ValueError, match="contradict"):
        reference_to_diffdet({"model": reference_state}, num_classes=81)
    with pytest.raises(ValueError, match=r"unknown fields \['num_boxes'\]"):
        reference_to_diffdet({"model": reference_state}, num_boxes=3)
    odd = OrderedDict(
        (k, v) for k, v in reference_state.items() if not k.startswith("backbone.bottom_up.res4.5")
    )
    with pytest.raises(ValueError, match="5 res4 blocks"):
        reference_model_config(odd)
    with pytest.raises(ValueError, match="lacks"):
        reference_model_config(OrderedDict((k, v) for k, v in reference_state.items() if k != "betas"))


def test_detect_layout_rejects_other_objects():
    with pytest.raises(ValueError, match="expected a dict"):
        detect_layout([1, 2])
    with pytest.raises(ValueError, match="not a DiffusionDet checkpoint"):
        detect_layout({"model": {"conv.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="not a DiffusionDet checkpoint"):  # a Swin trunk without a head
        detect_layout({"model": {"backbone.bottom_up.patch_embed.proj.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="version"):
        detect_layout({"format": "diffdet", "version": 99, "model_config": {}, "model": {}})


def test_strict_loading_lists_every_problem(small_model):
    state = OrderedDict(small_model.state_dict())
    del state["head.head_series.1.norm2.bias"]
    state["head.extra.weight"] = torch.zeros(1)
    state["head.head_series.0.class_logits.weight"] = torch.zeros(4, 64)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(small_model, state)
    message = str(info.value)
    assert "1 missing keys: head.head_series.1.norm2.bias" in message
    assert "1 unexpected keys: head.extra.weight" in message
    assert "head.head_series.0.class_logits.weight (4, 64) vs (3, 64)" in message


def test_diffdet_checkpoint_save_and_load(small_model, tmp_path):
    small_model.eval()
    path = save_checkpoint(
        tmp_path / "run" / "model.pth", small_model, small_model.cfg, extra={"iteration": 7}
    )
    assert sorted(os.listdir(path.parent)) == ["model.pth"]  # no temporary file left behind
    raw = torch_load(path)
    assert detect_layout(raw) == "diffdet" and raw["iteration"] == 7
    model = diffdet.load(path, dtype=torch.bfloat16)
    assert not model.training and model.cfg == small_model.cfg
    assert model.head.time_mlp[1].weight.dtype == torch.bfloat16 and model.betas.dtype == torch.float64
    expected = {
        k: v.to(torch.bfloat16) if v.dtype == torch.float32 else v
        for k, v in small_model.state_dict().items()
    }
    _assert_same_state(model.state_dict(), expected)
    with pytest.raises(ValueError, match="reference layout needs"):
        diffdet_to_reference(raw)
    assert model_from_checkpoint(raw, num_proposals=5).cfg.num_proposals == 5
    with pytest.raises(ValueError, match="unknown fields"):
        model_from_checkpoint(raw, proposals=5)


def test_save_checkpoint_refusals(small_model, tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a.pth", small_model, small_model.cfg, extra={"model": 1})
    folded = build_detector(ModelConfig(**SMALL))
    fold_frozen_batchnorm(folded)
    with pytest.raises(ValueError, match="folded"):
        save_checkpoint(tmp_path / "b.pth", folded, folded.cfg)
    assert not list(tmp_path.iterdir())


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = atomic_save({"a": torch.ones(2)}, tmp_path / "c.pth")
    with pytest.raises(Exception):  # noqa: B017 (pickling a lambda fails with a pickling error)
        atomic_save({"a": lambda: 0}, path)
    assert torch.equal(torch_load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_torch_load_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pth"):
        diffdet.load(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_presets_resolve_locally_and_explain_missing_files(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFDET_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        diffdet.load("coco_r50_300boxes")
    message = str(info.value)
    assert "diffdet_coco_res50_300boxes.pth" in message and str(tmp_path) in message
    assert "https://github.com/ShoufaChen/DiffusionDet/releases/download/v0.1/" in message
    with pytest.raises(FileNotFoundError, match="presets"):
        diffdet.load("no_such_preset")
    save_checkpoint(tmp_path / "diffdet_quickstart.pth", small_model, small_model.cfg)
    assert diffdet.load("quickstart").cfg == small_model.cfg


def test_load_explains_files_it_cannot_use(tmp_path):
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(ValueError, match="load_backbone_weights"):
        diffdet.load(Path(path))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(pickle.UnpicklingError, match="not a torch checkpoint"):
        diffdet.load(text)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a DiffusionDet checkpoint"):
        diffdet.load(tmp_path / "other.pth")
