"""Two gloo DDP processes match one process on the same global batch (distributed sampler, gradient
averaging, and the criterion's all-reduced normalisation together)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from trainkit import ToyDetector, tiny_config

from diffdet import train
from diffdet.engine.state import read_checkpoint
from diffdet.engine.trainer import Trainer

# Without aspect-ratio grouping the two processes split exactly the single process's batches.
STEPS = (
    "solver.max_iter=3",
    "solver.ims_per_batch=4",
    "train.checkpoint_period=100",
    "data.aspect_ratio_grouping=false",
)


def _train(data: dict, output_dir: Path) -> None:
    cfg, _ = tiny_config(data, output_dir, *STEPS)
    train_set, _ = train.build_datasets(cfg)
    torch.manual_seed(0)
    Trainer(cfg, ToyDetector(), train_set, torch.device("cpu")).train()


def _worker(rank: int, data: dict, output_dir: Path, init_file: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        _train(data, output_dir)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_run_matches_single_process(tiny_data, tmp_path):
    _train(tiny_data, tmp_path / "single")
    mp.spawn(_worker, args=(tiny_data, tmp_path / "ddp", tmp_path / "init"), nprocs=2, join=True)
    single = read_checkpoint(tmp_path / "single" / "model_final.pth")
    ddp = read_checkpoint(tmp_path / "ddp" / "model_final.pth")
    assert ddp["data"]["world_size"] == 2 and len(ddp["rng"]) == 2
    for name, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    # the runs moved the weights (the comparison is not between two untouched models)
    torch.manual_seed(0)
    initial = ToyDetector().state_dict()
    assert not torch.allclose(single["model"]["boxes.weight"], initial["boxes.weight"])
