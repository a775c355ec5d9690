"""LVIS end to end on a tiny LVIS-format dataset made from coco128 images: ``--config lvis_r50`` trains
(federated loss with the file's weights, repeat-factor sampling, LVIS evaluation at the end), resumes
exactly after SIGKILL, ``diffdet eval`` scores LVIS, and bad LVIS files stop with one line."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest
import torch
from trainkit import assert_same_final_checkpoint, kill_after_first_checkpoint, tiny_config

import diffdet
from diffdet import train
from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main as cli_main
from diffdet.config import load_config
from diffdet.engine.state import read_checkpoint
from diffdet.evaluation.lvis import LVIS_METRICS
from diffdet.metadata.lvis import lvis_v1_categories
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
COCO128 = next(
    (p / "shared" / "data" / "coco128" for p in ROOT.parents if (p / "shared" / "data" / "coco128").is_dir()),
    ROOT.parent / "shared" / "data" / "coco128",
)  # beside the repository (or beside the folder of worktrees)
needs_coco128 = pytest.mark.skipif(
    not (COCO128 / "train2017").is_dir(), reason=f"coco128 not found at {COCO128}"
)
needs_lvis = pytest.mark.skipif(
    importlib.util.find_spec("lvis") is None, reason="the lvis package is missing"
)

NUM_IMAGES = 6


def image_count(category_id: int) -> int:
    """The tiny file's own per-category image counts (not the shipped LVIS ones)."""
    return 1 + category_id % 7


@pytest.fixture(scope="module")
def lvis_data(tmp_path_factory) -> dict[str, Path]:
    """The first coco128 images as an LVIS v1 file: every LVIS category, COCO category c -> LVIS id c,
    images found through their coco_url under the coco128 root."""
    coco = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    images = sorted(coco["images"], key=lambda img: img["id"])[:NUM_IMAGES]
    kept = {img["id"] for img in images}
    annotations = [
        {k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area")}
        for a in coco["annotations"]
        if a["image_id"] in kept and not a["iscrowd"]
    ]
    lvis_images = [
        {"id": img["id"], "height": img["height"], "width": img["width"], "coco_url": img["coco_url"],
         "neg_category_ids": [1000 + i], "not_exhaustive_category_ids": [] if i % 2 else [1]}
        for i, img in enumerate(images)
    ]  # fmt: skip
    categories = [
        {
            "id": c.id,
            "name": c.name,
            "synset": c.synset,
            "frequency": c.frequency,
            "image_count": image_count(c.id),
        }
        for c in lvis_v1_categories()
    ]
    path = tmp_path_factory.mktemp("lvis") / "lvis_v1_tiny.json"
    path.write_text(json.dumps({"images": lvis_images, "annotations": annotations, "categories": categories}))
    return {
        "train_images": COCO128,
        "train_annotations": path,
        "val_images": COCO128,
        "val_annotations": path,
    }


def lvis_overrides(data: dict[str, Path], output_dir: Path, *extra: str, val: bool = False) -> list[str]:
    """``--config lvis_r50`` arguments for a few CPU iterations of a tiny 1203-class detector."""
    _, overrides = tiny_config(data, output_dir, "model.num_classes=1203", *extra, val=val)
    return ["--config", "lvis_r50", *overrides]


@needs_coco128
@needs_lvis
def test_lvis_r50_trains_with_the_files_fed_loss_weights_and_evaluates_lvis(lvis_data, tmp_path):
    argv = lvis_overrides(lvis_data, tmp_path, "solver.max_iter=3", "test.num_boxes=8", val=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main(argv) == 0
    printed = out.getvalue()
    assert "box AP: AP=" in printed and "APr=" in printed and "APf=" in printed
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [rec["loss"] for rec in lines if "loss" in rec]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert set(lines[-1]["eval"]) == set(LVIS_METRICS)
    final = read_checkpoint(tmp_path / "model_final.pth")
    expected = torch.tensor([image_count(c.id) for c in lvis_v1_categories()], dtype=torch.float32) ** 0.5
    assert torch.equal(final["model"]["criterion.fed_loss_cls_weights"], expected)
    loaded = diffdet.load(tmp_path / "model_final.pth")  # an LVIS training checkpoint is a usable model
    assert loaded.category_ids == tuple(range(1, 1204))
    assert torch.equal(loaded.criterion.fed_loss_cls_weights, expected)
    assert final["data"]["sampler"] == "RepeatFactorTrainingSampler"
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.model.loss.use_fed_loss and cfg.data.repeat_threshold == 0.001 and cfg.data.crop


@needs_coco128
def test_repeat_factor_training_resumes_exactly_after_a_kill(lvis_data, tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")
    steps = ["solver.max_iter=6", "train.checkpoint_period=2", "data.repeat_threshold=0.5"]  # 0.5: repeats
    train.main(lvis_overrides(lvis_data, tmp_path / "straight", *steps))
    killed_dir = tmp_path / "killed"
    interrupted_at = kill_after_first_checkpoint(lvis_overrides(lvis_data, killed_dir, *steps), killed_dir)
    assert interrupted_at < 6, "the run finished before it could be killed"
    assert train.main([*lvis_overrides(lvis_data, killed_dir, *steps), "--resume"]) == 0
    assert_same_final_checkpoint(tmp_path / "straight", killed_dir, iterations=6)


@needs_coco128
@needs_lvis
def test_diffdet_eval_recognises_an_lvis_file(lvis_data, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
        num_proposals=8, min_size_test=40, max_size_test=64, num_classes=1203,
    )  # fmt: skip
    weights = save_checkpoint(tmp_path / "tiny.pth", build_detector(cfg), cfg)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main([
            "eval", "--data", str(lvis_data["val_annotations"]), "--images", str(COCO128),
            "--weights", str(weights), "--device", "cpu", "--boxes", "8", "--no-progress",
            "--max-images", "2",
        ])  # fmt: skip
    assert status == 0, err.getvalue()
    assert f"LVIS box AP over 2 image(s) of {lvis_data['val_annotations']}" in out.getvalue()
    assert out.getvalue().split("\n")[1].split() == list(LVIS_METRICS)


def test_a_bad_lvis_file_stops_training_with_one_line(tmp_path, capsys):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")
    image = {"id": 1, "height": 8, "width": 8, "coco_url": "x/val2017/1.jpg", "neg_category_ids": []}
    path = tmp_path / "lvis_bad.json"
    path.write_text(
        json.dumps({"images": [image], "annotations": [], "categories": [{"id": 1, "frequency": "r"}]})
    )
    data = {
        "train_images": tmp_path,
        "train_annotations": path,
        "val_images": tmp_path,
        "val_annotations": path,
    }
    assert train.main(lvis_overrides(data, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "'not_exhaustive_category_ids'" in err


@pytest.mark.parametrize(
    ("name", "backbone"), [("lvis_r50", "R50"), ("lvis_r101", "R101"), ("lvis_swinb", "SwinB")]
)
def test_lvis_presets_have_the_published_settings(name, backbone):
    cfg, coco = load_config(name), load_config("coco_r50_500boxes")
    assert cfg.model.backbone == backbone  # SwinB is only parsed here; building it needs the Swin backbone
    assert cfg.model.num_classes == 1203 and cfg.model.category_ids == tuple(range(1, 1204))
    assert cfg.model.loss.use_fed_loss and cfg.model.loss.fed_loss_freq_weight_power == 0.5
    assert cfg.model.loss.fed_loss_rule == "published" and cfg.model.loss.fed_loss_num_classes == 50
    assert cfg.data.sampler == "RepeatFactorTrainingSampler" and cfg.data.repeat_threshold == 0.001
    assert cfg.solver.steps == (210000, 250000) and cfg.solver.max_iter == 270000
    assert cfg.train.eval_period == 0 and cfg.model.num_proposals == 500 and cfg.data.crop
    assert cfg.data.val_annotations.endswith("lvis_v1_val.json") and cfg.data.val_images.endswith("coco")
    # Everything else as COCO (REFERENCE.md §10): lr, batch, clipping, warmup, seed, sizes.
    differ = {"steps", "max_iter", "eval_period", "output_dir", "sampler", "train_images", "val_images"}
    differ |= {"train_annotations", "val_annotations"}
    for section in ("solver", "train", "data"):
        for key, value in vars(getattr(coco, section)).items():
            assert key in differ or getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
