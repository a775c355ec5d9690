"""``python -m diffdet.train --config crowdhuman_r50`` on a tiny odgt dataset made from coco128 images."""

from __future__ import annotations

import json

from trainkit import TINY_MODEL

from diffdet import train
from diffdet.config import load_config
from diffdet.engine.state import read_checkpoint


def test_crowdhuman_preset():
    cfg = load_config("crowdhuman_r50")
    assert cfg.model.num_classes == 1 and cfg.model.num_proposals == 500 and cfg.model.backbone == "R50"
    assert cfg.data.train_annotations.endswith(".odgt") and cfg.data.crowdhuman_box == "vbox"
    assert cfg.data.annotation_format == "auto" and not cfg.data.crop
    assert cfg.solver.max_iter == 46875 and cfg.solver.steps == (37500,) and cfg.solver.base_lr == 2.5e-5


def test_a_few_iterations_on_odgt_with_evaluation(coco128_odgt, tmp_path, capsys):
    odgt, images = coco128_odgt["odgt"], coco128_odgt["images"]
    status = train.main([
        "--config", "crowdhuman_r50", "--output-dir", str(tmp_path), *TINY_MODEL, "model.num_classes=1",
        "model.num_proposals=20",  # > 14 persons per image: the published matcher needs P >= G
        f"data.train_images={images}", f"data.train_annotations={odgt}",
        f"data.val_images={images}", f"data.val_annotations={odgt}", "data.max_val_images=2",
        "data.min_size_train=[32, 40]", "data.max_size_train=64", "data.num_workers=0",
        "solver.ims_per_batch=2", "solver.max_iter=3", "solver.warmup_iters=1",
        "train.device=cpu", "train.log_period=1", "test.num_workers=0",
    ])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "CrowdHuman: AP50=" in printed and "mMR=" in printed and "JI=" in printed
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3]
    (evaluation,) = [r["eval"] for r in records if "eval" in r]
    assert set(evaluation) == {"AP50", "mMR", "recall", "JI"}
    final = read_checkpoint(tmp_path / "model_final.pth")
    assert final["config"]["model"]["class_names"] == ["person"]
    assert final["config"]["model"]["category_ids"] == [1]
