"""Window helpers of the Swin Transformer: partition and merge, shift mask, relative position index.

Every function reproduces the published Swin detection backbone (REFERENCE.md §9) element for element:
windows are ordered by image, window row, window column, with tokens row-major inside a window; the
shift mask labels the padded grid in 3 x 3 bands and gives -100.0 between tokens of different bands.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASK_VALUE = -100.0
"""Logit added between tokens of different shift bands (the published value, not -inf)."""


def window_padding(size: int, window: int) -> int:
    """Zero rows (or columns) appended so that ``size`` becomes a multiple of ``window``."""
    return (window - size % window) % window


def window_partition(x: Tensor, window: int) -> Tensor:
    """Cut a map into non-overlapping windows.

    Args:
        x (Tensor[B, Hp, Wp, C]): Hp and Wp multiples of ``window``.
        window: window side ws.

    Returns:
        Tensor[B·nW, ws·ws, C]: windows ordered by image, window row, window column; tokens row-major.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_order(
    height: int, width: int, window: int, shift: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Token gathers equal to the published pad, roll, partition and merge, roll back, crop.

    The published block zero-pads the H x W map to Hp x Wp, rolls it by -shift on both axes, cuts it
    into windows, and after the attention merges the windows, rolls back by +shift and crops. On a
    row-major padded map these are permutations, computed here once per stage by running the same
    steps on an image of token positions.

    Args:
        height: H of the token grid.
        width: W of the token grid.
        window: window side ws.
        shift: cyclic shift s (0 for unshifted blocks).
        device: where to build the indices.

    Returns:
        (order Tensor[Hp·Wp] int64: for each window slot (image-major window order, row-major tokens)
        the row-major padded position it reads; back Tensor[H·W] int64: for each row-major position of
        the unpadded grid, the window slot its token ends in).
    """
    hp = height + window_padding(height, window)
    wp = width + window_padding(width, window)
    positions = torch.arange(hp * wp, device=device).view(1, hp, wp, 1)
    if shift:
        positions = torch.roll(positions, shifts=(-shift, -shift), dims=(1, 2))
    order = window_partition(positions, window).reshape(-1)
    slots = torch.empty_like(order)
    slots[order] = torch.arange(order.numel(), device=device)
    return order, slots.view(hp, wp)[:height, :width].reshape(-1)


def shift_mask(
    height: int, width: int, window: int, shift: int, device: torch.device | None = None
) -> Tensor:
    """The additive attention mask of the shifted blocks of one stage (published ``BasicLayer``).

    Each position of the padded Hp x Wp grid is labelled 3·row_band + col_band, with row bands
    [0, Hp - ws), [Hp - ws, Hp - s), [Hp - s, Hp) (columns likewise); two tokens of a window whose
    labels differ get :data:`MASK_VALUE`, others 0. Padding positions are labelled like any other, so
    padding is never masked (the published behaviour).

    Args:
        height: H of the stage's token grid (before padding).
        width: W of the stage's token grid.
        window: window side ws.
        shift: cyclic shift s (ws // 2).
        device: where to build the mask.

    Returns:
        Tensor[nW, ws·ws, ws·ws] float32 with values in {-100, 0}, nW = (Hp / ws)·(Wp / ws).
    """
    hp = height + window_padding(height, window)
    wp = width + window_padding(width, window)

    def bands(size: int) -> Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()

    labels = 3 * bands(hp)[:, None] + bands(wp)[None, :]  # [Hp, Wp]
    windows = window_partition(labels[None, :, :, None], window).squeeze(-1)  # [nW, N]
    differ = windows[:, None, :] != windows[:, :, None]  # [nW, N, N]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, MASK_VALUE)


def relative_position_index(window: int) -> Tensor:
    """Index into the ((2ws - 1)², heads) bias table for each token pair of a window.

    index[p, q] = (r_p - r_q + ws - 1)·(2ws - 1) + (c_p - c_q + ws - 1) for tokens p = (r_p, c_p),
    q = (r_q, c_q), token number r·ws + c.

    Returns:
        Tensor[ws·ws, ws·ws] int64 in [0, (2ws - 1)²); index[0, 0] = (2ws - 1)·(ws - 1) + ws - 1.
    """
    coords = torch.arange(window)
    rows = coords.repeat_interleave(window)  # [N]
    cols = coords.repeat(window)  # [N]
    dr = rows[:, None] - rows[None, :] + window - 1
    dc = cols[:, None] - cols[None, :] + window - 1
    return dr * (2 * window - 1) + dc
