"""The training loop: AdamW, warmup + step decay, clipping, AMP, accumulation, EMA, exact resume.

One iteration is one optimiser step over ``solver.ims_per_batch`` images: ``grad_accum``
micro-batches per process, ``ims_per_batch / (world_size · grad_accum)`` images each. The model is
any module whose train-mode ``model(images, targets)`` returns a dict of weighted losses (their sum
is minimised) and whose eval-mode ``model(images)`` returns detections.

Exact resume: the data stream is a function of the iteration (see :mod:`diffdet.data.loader`), the
loader draws no numbers from the global RNG, evaluation runs under a forked RNG, and checkpoints hold
the optimiser, scheduler, scaler, EMA and every process's RNG states. ``--resume`` after a kill
therefore continues as an uninterrupted run would (bitwise on the CPU with deterministic kernels).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from diffdet.checkpoint.model_io import model_payload
from diffdet.config import Config, to_dict
from diffdet.data.coco import CocoDetection
from diffdet.data.loader import build_train_loader
from diffdet.data.repeat_factor import repeat_factors_from_category_frequency
from diffdet.engine import distributed as du
from diffdet.engine.ema import ModelEMA
from diffdet.engine.metrics import MetricsLog, Progress
from diffdet.engine.optim import build_optimizer, build_scheduler
from diffdet.engine.state import (
    ResumeMismatchError,
    capture_rng,
    checkpoint_name,
    last_checkpoint,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from diffdet.errors import InputError
from diffdet.evaluation import build_evaluator, inference_on_dataset

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; nothing was written after the last good checkpoint."""


class Trainer:
    """Trains ``model`` on ``train_set`` following ``cfg.solver`` and ``cfg.train``.

    Args:
        cfg (Config): the run's configuration.
        model (nn.Module): the detector, already on ``device`` (not yet wrapped in DDP).
        train_set (CocoDetection): training data with a training transform.
        device (torch.device): where the model lives.
        val_set (CocoDetection | None): evaluation data (original-size images), or None.
    """

    def __init__(
        self,
        cfg: Config,
        model: torch.nn.Module,
        train_set: CocoDetection,
        device: torch.device,
        val_set: CocoDetection | None = None,
    ) -> None:
        self.cfg, self.model, self.train_set, self.val_set, self.device = (
            cfg,
            model,
            train_set,
            val_set,
            device,
        )
        solver = cfg.solver
        self.world_size, self.rank = du.get_world_size(), du.get_rank()
        per_step = self.world_size * solver.grad_accum
        if solver.ims_per_batch % per_step:
            raise InputError(
                f"solver.ims_per_batch ({solver.ims_per_batch}) must be divisible by world_size × grad_accum "
                f"({self.world_size} × {solver.grad_accum})"
            )
        self.micro_batch = solver.ims_per_batch // per_step
        self.optimizer = build_optimizer(model, solver)
        self.scheduler = build_scheduler(self.optimizer, solver)
        self.scaler = torch.amp.GradScaler(device.type, enabled=solver.amp == "fp16")
        self.ema = ModelEMA(model, solver.ema_decay) if solver.ema else None
        self.ddp = (
            DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
            if du.is_distributed()
            else model
        )
        self.output_dir = Path(cfg.train.output_dir)
        self.iteration = 0
        self.log = MetricsLog(self.output_dir / "metrics.jsonl") if du.is_main_process() else None
        self.last_eval: dict[str, float] | None = None

    # -- checkpoints -------------------------------------------------------------------------------
    def _data_state(self) -> dict:
        """What fixes the data stream; a resume must find the same (checked in :meth:`resume`)."""
        state = {"seed": self.cfg.train.seed, "world_size": self.world_size, "micro_batch": self.micro_batch}
        if self.cfg.data.sampler != "TrainingSampler":  # absent for the default: older checkpoints resume
            state.update(sampler=self.cfg.data.sampler, repeat_threshold=self.cfg.data.repeat_threshold)
        return state

    def repeat_factors(self) -> torch.Tensor | None:
        """Per-image repeat factors of the training set with the repeat-factor sampler, else None."""
        if self.cfg.data.sampler != "RepeatFactorTrainingSampler":
            return None
        return repeat_factors_from_category_frequency(
            self.train_set.image_category_ids(), self.cfg.data.repeat_threshold
        )

    def state(self) -> dict:
        """Everything a resume needs (collective: every process must call it)."""
        rng = du.all_gather_objects(capture_rng())
        return {
            **model_payload(self.model, self.cfg.model),  # so diffdet.load reads training checkpoints
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "iteration": self.iteration,
            "data": self._data_state(),
            "rng": rng,
            "config": to_dict(self.cfg),
        }

    def save(self, final: bool = False) -> Path | None:
        """Write a checkpoint of the current iteration (rank 0 writes; all ranks must call)."""
        payload = self.state()
        path = None
        if du.is_main_process():
            path = write_checkpoint(self.output_dir, checkpoint_name(self.iteration, final), payload)
        du.barrier()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint in the output folder, if any; returns whether one was loaded
        (collective: every process must call it).

        Raises:
            ResumeMismatchError: the checkpoint was written by another number of processes, seed or
                batch split, or the processes see different checkpoints (an output folder that is
                not shared between the machines), or holds no EMA weights for a run with solver.ema.
        """
        path = last_checkpoint(self.output_dir)
        seen = du.all_gather_objects(None if path is None else path.name)
        if len(set(seen)) > 1:
            other = next(r for r, name in enumerate(seen) if name != seen[0])
            raise ResumeMismatchError(
                f"cannot resume: in {self.output_dir} rank 0 finds checkpoint {seen[0] or 'none'} but rank "
                f"{other} finds {seen[other] or 'none'}; train.output_dir must be one folder shared by every "
                "machine"
            )
        if path is None:
            return False
        payload = read_checkpoint(path)
        data = payload["data"]
        expected = self._data_state()
        if data.get("world_size") != self.world_size:
            raise ResumeMismatchError(
                f"cannot resume {path}: it was written by {data.get('world_size')} processes and this run "
                f"has {self.world_size}; resume with {data.get('world_size')} processes (the data order "
                "and the per-process random streams depend on the number)"
            )
        if data != expected:
            raise ResumeMismatchError(
                f"cannot resume {path}: it was written with {data}, this run has {expected}"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        if self.ema is not None:
            if payload["ema"] is None:
                raise ResumeMismatchError(
                    f"cannot resume {path} with solver.ema=true: it holds no EMA weights"
                )
            self.ema.load_state_dict(payload["ema"])
        self.iteration = int(payload["iteration"])
        restore_rng(payload["rng"][self.rank])
        return True

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float] | None:
        """The benchmark's metrics (COCO, LVIS or CrowdHuman) of the (EMA) model on the validation set,
        each process running its share of the images; returned and logged on rank 0 (collective).
        The sampler's noise is seeded with ``train.seed``, so an evaluation is reproducible and the
        same for any number of processes."""
        if self.val_set is None:
            return None
        test = self.cfg.test
        kwargs = {k: v for k, v in (("num_boxes", test.num_boxes), ("steps", test.steps)) if v}
        model = self.ema.module if self.ema is not None else self.model
        evaluator = build_evaluator(
            self.val_set, self.output_dir / "coco_results.json", crowdhuman_toolkit_format=False
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # evaluation must not shift the training noise
            metrics = inference_on_dataset(
                model, self.val_set, evaluator, device=self.device, batch_size=test.batch_size,
                num_workers=test.num_workers, seed=self.cfg.train.seed, **kwargs,
            )  # fmt: skip
        if self.log is not None and metrics is not None:
            self.log.write(self.iteration, eval=metrics)
        self.last_eval = metrics
        return metrics

    # -- training ----------------------------------------------------------------------------------
    def _micro_step(self, batch, last: bool) -> dict[str, float]:
        images, targets, _ = batch
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        amp = self.cfg.solver.amp
        autocast = torch.autocast(self.device.type, dtype=AMP_DTYPES.get(amp), enabled=amp != "none")
        sync = contextlib.nullcontext() if last or self.ddp is self.model else self.ddp.no_sync()
        with sync:
            with autocast:
                losses = self.ddp(images, targets)
            loss = sum(losses.values())
            scalars = torch.stack([*losses.values(), loss]).detach().float().cpu().tolist()  # one sync
            values = dict(zip([*losses, "loss"], scalars, strict=True))
            if du.any_across_processes(not math.isfinite(values["loss"]), self.device):
                last_good = last_checkpoint(self.output_dir)
                terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                raise NonFiniteLossError(
                    f"non-finite training loss at iteration {self.iteration} on some process ({terms} on "
                    f"rank {self.rank}); stopping without saving. Last good checkpoint: {last_good}"
                )
            self.scaler.scale(loss / self.cfg.solver.grad_accum).backward()
        return values

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.cfg.solver.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.solver.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def train(self) -> dict[str, float] | None:
        """Run from the current iteration to ``solver.max_iter``; returns the last evaluation."""
        cfg, accum = self.cfg, self.cfg.solver.grad_accum
        loader = build_train_loader(
            self.train_set,
            self.micro_batch,
            cfg.train.seed,
            cfg.data.num_workers,
            cfg.data.aspect_ratio_grouping,
            start_batch=self.iteration * accum,
            rank=self.rank,
            world_size=self.world_size,
            repeat_factors=self.repeat_factors(),
        )
        batches = iter(loader)
        self.model.train()
        progress = Progress(self.iteration, cfg.solver.max_iter, du.is_main_process())
        try:
            while self.iteration < cfg.solver.max_iter:
                lr = self.optimizer.param_groups[0]["lr"]
                terms: dict[str, float] = {}
                for micro in range(accum):
                    for k, v in self._micro_step(next(batches), last=micro == accum - 1).items():
                        terms[k] = terms.get(k, 0.0) + v / accum
                self._optimizer_step()
                self.iteration += 1
                rate = progress.update(terms["loss"], lr, cfg.solver.ims_per_batch)
                if self.log is not None and (
                    self.iteration % cfg.train.log_period == 0 or self.iteration == 1
                ):
                    self.log.write(self.iteration, lr=lr, images_per_s=round(rate, 2), **terms)
                done = self.iteration == cfg.solver.max_iter
                if self.iteration % cfg.train.checkpoint_period == 0 or done:
                    self.save(final=done)
                if (cfg.train.eval_period and self.iteration % cfg.train.eval_period == 0) or done:
                    self.evaluate()
                progress.pause()
        finally:
            progress.close()
        return self.last_eval
