"""Training's evaluation under DDP: two gloo processes split the validation images, rank 0 gathers,
logs and writes what one process does; the sampler's noise is seeded with ``train.seed``, so the
evaluation repeats exactly and does not depend on the number of processes."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from trainkit import ToyDetector, tiny_config

from diffdet import train
from diffdet.engine.trainer import Trainer

WAIT_S = 300  # every wait on the two processes gives up after this


class NoisyToyDetector(ToyDetector):
    """ToyDetector whose eval-mode scores take noise from the sampler's per-image generators."""

    def forward(self, images, targets=None, generator=None, **knobs):
        outputs = super().forward(images, targets)
        if self.training:
            return outputs
        for out, gen in zip(outputs, generator, strict=True):
            out["scores"] = out["scores"] * torch.rand(out["scores"].shape, generator=gen)
        return outputs


def _evaluate(data: dict, output_dir: Path, seed: int = 3) -> dict[str, float] | None:
    cfg, _ = tiny_config(data, output_dir, "solver.max_iter=1", f"train.seed={seed}", val=True)
    train_set, val_set = train.build_datasets(cfg)
    torch.manual_seed(0)  # the same weights in every process
    model = NoisyToyDetector()
    torch.manual_seed(100 + (dist.get_rank() if dist.is_initialized() else 0))  # global RNG differs
    return Trainer(cfg, model, train_set, torch.device("cpu"), val_set).evaluate()


def _worker(rank: int, data: dict, output_dir: Path, init_file: Path, answers: Path) -> None:
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=WAIT_S)
    dist.init_process_group("gloo", f"file://{init_file}", rank=rank, world_size=2, timeout=timeout)
    try:
        (answers / f"rank{rank}.json").write_text(json.dumps(_evaluate(data, output_dir)))
    finally:
        dist.destroy_process_group()


def test_two_process_evaluation_equals_one_process(tiny_data, tmp_path):
    name = "coco_results.json"
    single = _evaluate(tiny_data, tmp_path / "single")
    assert _evaluate(tiny_data, tmp_path / "again") == single  # seeded: a repeat gives the same
    assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    _evaluate(tiny_data, tmp_path / "other", seed=4)  # ... and the seed reaches the detector
    assert (tmp_path / "other" / name).read_bytes() != (tmp_path / "single" / name).read_bytes()
    context = mp.start_processes(
        _worker, args=(tiny_data, tmp_path / "ddp", tmp_path / "init", tmp_path), nprocs=2, join=False
    )
    deadline = time.monotonic() + WAIT_S
    while not context.join(timeout=5):
        assert time.monotonic() < deadline, "the two processes did not finish"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[1] is None and ranks[0] == single
    assert (tmp_path / "ddp" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    logged = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [record["eval"] for record in logged] == [single]
