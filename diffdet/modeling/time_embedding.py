"""Sinusoidal embedding of the diffusion timestep (REFERENCE.md §2.1, ``time_mlp[0]``).

For an embedding width ``dim`` with ``half = dim // 2``::

    f_i = exp(-i * ln(10000) / (half - 1)),  i = 0 .. half - 1
    emb(t) = concat(sin(t * f), cos(t * f))          # sin first

The frequencies are computed as the reference computes them (an integer ``arange`` times a float32
scalar, then ``exp`` in float32), so the embedding matches it bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalPositionEmbeddings(nn.Module):
    """Stateless sinusoidal timestep embedding.

    Args:
        dim: embedding width (256 = hidden_dim in the reference); must be even and >= 4.

    Raises:
        ValueError: ``dim`` is odd or < 4 (``half - 1`` would be 0).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"dim must be even and >= 4, got {dim}")
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, time: Tensor) -> Tensor:
        """Embed timesteps.

        Args:
            time (Tensor[B]): timesteps 0..T-1, int64 or floating.

        Returns:
            Tensor[B, dim]: float32 embedding (sin half first, then cos half).
        """
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=time.device) * -scale)  # [half], float32
        args = time[:, None] * freqs[None, :]  # [B, half], float32
        return torch.cat((args.sin(), args.cos()), dim=-1)
