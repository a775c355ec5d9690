"""AdamW and the warmup + step-decay schedule of the reference (REFERENCE.md §1, ``build_optimizer``)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import torch

from diffdet.config import SolverConfig


def build_optimizer(model: torch.nn.Module, solver: SolverConfig) -> torch.optim.AdamW:
    """AdamW with one group per trainable tensor, as the reference.

    Every group gets ``base_lr`` (× ``backbone_multiplier`` for names containing "backbone") and
    ``weight_decay``; norm weights and biases are decayed too. Frozen parameters are left out.
    """
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = solver.base_lr * (solver.backbone_multiplier if "backbone" in name else 1.0)
        groups.append({"params": [param], "lr": lr, "weight_decay": solver.weight_decay})
    if not groups:
        raise ValueError("model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=solver.base_lr, betas=tuple(solver.betas), eps=1e-8)


def lr_factor(
    iteration: int, steps: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float
) -> float:
    """Multiplier of the base lr at an iteration (detectron2 WarmupMultiStep, linear warmup).

    Args:
        iteration (int): optimiser steps taken so far.
        steps (Sequence[int]): iterations at which the lr is multiplied by ``gamma``.
        gamma (float): decay factor.
        warmup_iters (int): warmup length; the factor rises linearly from ``warmup_factor`` to 1.
        warmup_factor (float): factor at iteration 0.

    Returns:
        float: ``warmup · gamma^(number of steps <= iteration)``.
    """
    factor = gamma ** bisect_right(sorted(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, solver: SolverConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR applying :func:`lr_factor` (step it once per optimiser step)."""
    steps = tuple(solver.steps)

    def factor(it: int) -> float:
        return lr_factor(it, steps, solver.gamma, solver.warmup_iters, solver.warmup_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
