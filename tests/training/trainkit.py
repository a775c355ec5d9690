"""Helpers of the training tests: a tiny detector config, and a tiny deterministic toy detector.

The toy detector maps each image to a feature vector with one strided convolution and predicts a
fixed number of boxes and class logits from it, then scores them with the real criterion. It has no
diffusion noise and no batch statistics, so DDP and single-process runs can be compared exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from diffdet.config import Config, load_config
from diffdet.engine.state import last_checkpoint, read_checkpoint
from diffdet.losses import LossConfig, build_criterion
from diffdet.modeling.box_ops import box_cxcywh_to_xyxy

TINY_MODEL = [
    "model.backbone=R18",
    "model.backbone_norm=GN",
    "model.freeze_at=0",
    "model.num_classes=4",
    "model.num_proposals=8",
    "model.hidden_dim=32",
    "model.dim_feedforward=64",
    "model.nheads=2",
    "model.num_heads=2",
    "model.dim_dynamic=8",
    "model.min_size_test=40",
    "model.max_size_test=64",
]


def tiny_config(
    data: dict[str, Path], output_dir: Path, *extra: str, val: bool = False
) -> tuple[Config, list[str]]:
    """A config (and the overrides that make it) for a few CPU iterations of a tiny detector."""
    overrides = [
        *TINY_MODEL,
        f"data.train_images={data['train_images']}",
        f"data.train_annotations={data['train_annotations']}",
        f"data.val_images={data['val_images']}",
        f"data.val_annotations={data['val_annotations'] if val else ''}",
        "data.min_size_train=[32, 40]",
        "data.max_size_train=64",
        "data.num_workers=0",
        "solver.ims_per_batch=2",
        "solver.base_lr=0.001",
        "solver.warmup_iters=2",
        "solver.steps=[1000]",
        "train.device=cpu",
        "train.seed=3",
        "train.eval_period=0",
        "train.log_period=1",
        f"train.output_dir={output_dir}",
        *extra,
    ]
    return load_config(None, overrides), overrides


def kill_after_first_checkpoint(argv: list[str], output_dir: Path, timeout_s: float = 180) -> int:
    """Run ``python -m diffdet.train *argv`` (one thread), SIGKILL it as soon as ``output_dir`` has a
    checkpoint, and return that checkpoint's iteration."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffdet.train", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + timeout_s
    while last_checkpoint(output_dir) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return read_checkpoint(last_checkpoint(output_dir))["iteration"]


def assert_same_final_checkpoint(straight_dir: Path, resumed_dir: Path, iterations: int) -> None:
    """The final checkpoints of two runs hold the same iteration, weights (buffers included), AdamW
    state and RNG state, bit for bit."""
    straight = read_checkpoint(straight_dir / "model_final.pth")
    resumed = read_checkpoint(resumed_dir / "model_final.pth")
    assert resumed["iteration"] == straight["iteration"] == iterations
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for a, b in zip(
        straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert torch.equal(straight["rng"][0]["torch"], resumed["rng"][0]["torch"])


class ToyDetector(nn.Module):
    def __init__(self, num_classes: int = 4, num_queries: int = 6, loss: LossConfig | None = None) -> None:
        super().__init__()
        self.num_classes, self.num_queries = num_classes, num_queries
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.logits = nn.Linear(8, num_queries * num_classes)
        self.boxes = nn.Linear(8, num_queries * 4)
        self.criterion = build_criterion(num_classes, loss or LossConfig())

    def _predict(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = torch.cat([torch.relu(self.conv(im.float()[None] / 255)).mean((2, 3)) for im in images])
        whwh = torch.tensor([[im.shape[2], im.shape[1]] * 2 for im in images], dtype=torch.float32)
        logits = self.logits(feats).view(len(images), self.num_queries, self.num_classes)
        cxcywh = self.boxes(feats).view(len(images), self.num_queries, 4).sigmoid()
        return logits, box_cxcywh_to_xyxy(cxcywh) * whwh[:, None, :], whwh

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None, **inference_kwargs):
        """Losses in train mode, detections in eval mode; the sampler's knobs (``generator``...) that
        evaluation passes have nothing to act on here."""
        logits, boxes, whwh = self._predict(images)
        if not self.training:
            scores, labels = logits.sigmoid().max(-1)
            return [
                {"boxes": b, "scores": s, "labels": lab}
                for b, s, lab in zip(boxes, scores, labels, strict=True)
            ]
        prepared = [
            {"labels": t["labels"], "boxes_xyxy": t["boxes"], "image_size_xyxy": wh}
            for t, wh in zip(targets, whwh, strict=True)
        ]
        return self.criterion({"pred_logits": logits, "pred_boxes": boxes}, prepared)


class NaNAfter(ToyDetector):
    """A ToyDetector whose losses become NaN from its ``bad_call``-th training call on."""

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.bad_call, self.calls = bad_call, 0

    def forward(self, images, targets=None):
        losses = super().forward(images, targets)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return losses
