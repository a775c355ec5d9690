"""Exponential moving average of model weights (the reference's optional MODEL_EMA, decay 0.999)."""

from __future__ import annotations

import copy

import torch


class ModelEMA:
    """Keeps ``ema = decay · ema + (1 − decay) · weights`` after every optimiser step.

    Floating-point parameters and buffers are averaged; integer buffers (counters) are copied.

    Args:
        model (nn.Module): the (unwrapped) model being trained.
        decay (float): averaging factor in [0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = current[name].detach()
            if avg.is_floating_point():
                avg.mul_(self.decay).add_(new.to(avg.dtype), alpha=1 - self.decay)
            else:
                avg.copy_(new)

    def state_dict(self) -> dict:
        """The averaged weights."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore averaged weights saved by :meth:`state_dict`."""
        self.module.load_state_dict(state)
