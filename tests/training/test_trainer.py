"""The training loop: the loss goes down, resume after a kill is exact, NaN stops cleanly, schedule."""

from __future__ import annotations

import json

import pytest
import torch
from trainkit import (
    NaNAfter,
    ToyDetector,
    assert_same_final_checkpoint,
    kill_after_first_checkpoint,
    tiny_config,
)

from diffdet import train
from diffdet.engine.optim import lr_factor
from diffdet.engine.state import last_checkpoint, read_checkpoint
from diffdet.engine.trainer import NonFiniteLossError, Trainer


def _losses(output_dir) -> list[float]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [rec["loss"] for rec in map(json.loads, lines) if "loss" in rec]


def test_a_few_iterations_lower_the_loss(tiny_data, tmp_path):
    cfg, _ = tiny_config(
        tiny_data, tmp_path, "solver.max_iter=10", "data.max_train_images=2", "data.flip_prob=0.0",
        "data.min_size_train=[40]", "train.checkpoint_period=100",
    )  # fmt: skip
    train.run(cfg)
    losses = _losses(tmp_path)
    assert len(losses) == 10
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses


def test_resume_after_a_kill_equals_the_uninterrupted_run(tiny_data, tmp_path):
    """Kill a CLI training run (SIGKILL) once it has a checkpoint, resume it, compare bitwise."""
    steps = ["solver.max_iter=6", "train.checkpoint_period=2"]
    cfg, _ = tiny_config(tiny_data, tmp_path / "straight", *steps)
    train.run(cfg)

    killed_dir = tmp_path / "killed"
    _, overrides = tiny_config(tiny_data, killed_dir, *steps)
    interrupted_at = kill_after_first_checkpoint(overrides, killed_dir)
    assert interrupted_at < 6, "the run finished before it could be killed"

    cfg, _ = tiny_config(tiny_data, killed_dir, *steps)
    train.run(cfg, resume=True)
    assert_same_final_checkpoint(tmp_path / "straight", killed_dir, iterations=6)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    cfg, _ = tiny_config(tiny_data, tmp_path, "solver.max_iter=8", "train.checkpoint_period=2")
    train_set, _ = train.build_datasets(cfg)
    torch.manual_seed(0)
    trainer = Trainer(cfg, NaNAfter(bad_call=4), train_set, torch.device("cpu"))
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite training loss at iteration 3 .*model_0000002.pth"
    ):
        trainer.train()
    assert last_checkpoint(tmp_path).name == "model_0000002.pth"
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000002.pth"]
    payload = read_checkpoint(tmp_path / "model_0000002.pth")
    assert all(torch.isfinite(v).all() for v in payload["model"].values())


def test_bf16_accumulation_and_ema_train_and_save_the_average(tiny_data, tmp_path):
    cfg, _ = tiny_config(
        tiny_data, tmp_path, "solver.max_iter=3", "solver.amp=bf16", "solver.grad_accum=2", "solver.ema=true",
        "solver.ema_decay=0.5", "train.checkpoint_period=100",
    )  # fmt: skip
    train_set, _ = train.build_datasets(cfg)
    torch.manual_seed(0)
    model = ToyDetector()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(cfg, model, train_set, torch.device("cpu")).train()
    payload = read_checkpoint(tmp_path / "model_final.pth")
    weight = "conv.weight"
    assert not torch.equal(payload["model"][weight], initial[weight])
    assert not torch.equal(payload["ema"][weight], payload["model"][weight])
    assert all(
        all(torch.isfinite(torch.tensor(v)) for v in [rec["loss"]])
        for rec in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    )


def test_warmup_and_step_schedule():
    assert lr_factor(0, [10, 20], 0.1, 5, 0.01) == pytest.approx(0.01)
    assert lr_factor(2, [10, 20], 0.1, 5, 0.01) == pytest.approx(0.01 * 0.6 + 0.4)
    assert lr_factor(5, [10, 20], 0.1, 5, 0.01) == 1.0
    assert lr_factor(10, [10, 20], 0.1, 5, 0.01) == pytest.approx(0.1)
    assert lr_factor(25, [10, 20], 0.1, 5, 0.01) == pytest.approx(0.01)


def test_batch_must_split_over_processes_and_accumulation(tiny_data, tmp_path):
    cfg, _ = tiny_config(tiny_data, tmp_path, "solver.ims_per_batch=3", "solver.grad_accum=3")
    train_set, _ = train.build_datasets(cfg)
    Trainer(cfg, ToyDetector(), train_set, torch.device("cpu"))  # 3 = 1 process × 3 micro-batches of 1
    cfg, _ = tiny_config(tiny_data, tmp_path, "solver.ims_per_batch=4", "solver.grad_accum=2")
    cfg.solver.grad_accum = 3
    with pytest.raises(ValueError, match="ims_per_batch"):
        Trainer(cfg, ToyDetector(), train_set, torch.device("cpu"))
