"""``diffdet quickstart`` end to end with a tiny override: data, training, evaluation, picture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import diffdet
from diffdet.cli import main
from diffdet.data.synthetic import CLASSES

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_quickstart_writes_a_loadable_checkpoint_a_picture_and_the_ap(tmp_path, capsys):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading and AP)")
    out = tmp_path / "qs"
    status = main(
        [
            "quickstart",
            "--output-dir",
            str(out),
            "--config",
            str(CONFIG),
            "--num-train",
            "4",
            "--num-val",
            "2",
            "solver.max_iter=2",
            "solver.ims_per_batch=2",
            "solver.steps=[1]",
            "solver.warmup_iters=1",
            "train.checkpoint_period=2",
            "train.eval_period=0",
            "test.batch_size=2",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "COCO box AP on the synthetic val split: AP=" in printed and "AP50=" in printed
    assert sorted(p.name for p in (out / "data" / "val").iterdir()) == ["000001.png", "000002.png"]
    picture = Image.open(out / "detections.png")
    assert picture.width > 0 and picture.height > 0
    assert (out / "model_final.pth").is_file()
    model = diffdet.load(out / "diffdet_quickstart.pth")
    assert model.cfg.backbone == "R18-half" and model.cfg.class_names == CLASSES
    trained = diffdet.load(out / "model_final.pth")  # the trainer's checkpoints load as well
    assert trained.cfg == model.cfg
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    model.eval()
    with torch.no_grad():
        (detections,) = model([torch.zeros(3, 64, 64, dtype=torch.uint8)])
    assert detections["boxes"].shape[-1] == 4
