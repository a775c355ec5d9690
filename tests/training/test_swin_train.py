"""A tiny Swin detector trains: from ImageNet-style Swin weights (--weights, detectron2 .pkl of torch
tensors), a few CPU iterations, a checkpoint ``diffdet.load`` reads back as a Swin model."""

from __future__ import annotations

import json
import pickle

import torch
from trainkit import tiny_config

import diffdet
from diffdet import train
from diffdet.modeling.backbone import build_swin

SWIN = ["model.backbone=SwinNano", "model.backbone_norm=FrozenBN", "model.freeze_at=2"]  # both ignored


def test_tiny_swin_trains_from_swin_weights(tiny_data, tmp_path, capsys):
    torch.manual_seed(7)
    trunk = build_swin("SwinNano").state_dict()
    classifier = {k: v for k, v in trunk.items() if not k.startswith("norm")}
    classifier |= {
        "norm.weight": torch.ones(256),
        "norm.bias": torch.zeros(256),
        "head.weight": torch.zeros(3, 256),
    }
    weights = tmp_path / "swin_nano_imagenet.pkl"
    weights.write_bytes(
        pickle.dumps({"model": classifier, "__author__": "third_party", "matching_heuristics": True})
    )

    cfg, _ = tiny_config(
        tiny_data, tmp_path / "run", *SWIN, "solver.max_iter=10", "data.max_train_images=2",
        "data.flip_prob=0.0", "data.min_size_train=[40]", "train.checkpoint_period=100",
    )  # fmt: skip
    train.run(cfg, weights=str(weights))
    # 4 patch_embed + 8 blocks x 14 + 3 downsample x 3 = 125 filled; norm0..3 left at init.
    assert "loaded 125 backbone tensors; 8 missing ['norm0.weight'" in capsys.readouterr().out

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [rec["loss"] for rec in map(json.loads, lines) if "loss" in rec]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses

    model = diffdet.load(tmp_path / "run" / "model_final.pth")
    assert model.cfg.backbone == "SwinNano"
    trained = model.backbone.bottom_up.state_dict()
    assert not torch.equal(trained["patch_embed.proj.weight"], trunk["patch_embed.proj.weight"])  # it learned
