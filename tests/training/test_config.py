"""Config presets, YAML round trip, and key=value overrides with type checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffdet.config import dump_config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "name", ["coco_r50_500boxes", "coco_r50_300boxes", "coco_r101", "coco_swinb", "quickstart"]
)
def test_presets_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    if name.startswith("coco"):
        assert cfg.model.num_classes == 80 and cfg.data.crop and cfg.solver.base_lr == 2.5e-5
        assert cfg.solver.clip == 1.0 and cfg.solver.warmup_iters == 1000 and cfg.solver.max_iter == 450000
        assert cfg.data.min_size_train == tuple(range(480, 801, 32))
    expected = {"coco_r50_300boxes": 300, "quickstart": 50}.get(name, 500)
    assert cfg.model.num_proposals == expected
    backbones = {"coco_r101": "R101", "coco_swinb": "SwinB-22k", "quickstart": "R18-half"}
    assert cfg.model.backbone == backbones.get(name, "R50")


def test_overrides_are_typed_and_round_trip(tmp_path):
    cfg = load_config(
        CONFIGS / "quickstart.yaml",
        ["solver.base_lr=1e-4", "model.loss.ota_k=3", "data.min_size_train=[64, 80]", "train.output_dir=123"],
    )
    assert cfg.solver.base_lr == 1e-4 and cfg.model.loss.ota_k == 3
    assert cfg.data.min_size_train == (64, 80) and cfg.train.output_dir == "123"
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.lr=1", r"unknown config key 'solver.lr'; valid keys under solver: \['ims_per_batch'"),
        ("model.loss.nope=1", "unknown config key 'model.loss.nope'"),
        ("solver.base_lr=fast", "solver.base_lr' must be a number"),
        ("solver.max_iter=1.5", "solver.max_iter' must be an integer"),
        ("data.crop=maybe", "data.crop' must be true or false"),
        ("solver.betas=[0.9]", "solver.betas' must have 2 items"),
        ("solver.amp=fp8", "solver amp must be one of"),
        ("solver.base_lr", "override must look like key=value"),
        ("solver.base_lr.x=1", "is not a section"),
    ],
)
def test_bad_overrides_give_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config("nope.yaml")


def test_preset_names_resolve_to_the_shipped_files():
    assert load_config("coco_r50_300boxes") == load_config(CONFIGS / "coco_r50_300boxes.yaml")
    with pytest.raises(ValueError, match=r"unknown preset 'coco_r42'.*coco_r50_500boxes"):
        load_config("coco_r42")
