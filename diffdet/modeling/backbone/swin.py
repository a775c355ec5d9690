"""Swin Transformer backbone (Liu et al. 2021) as the published DiffusionDet uses it (REFERENCE.md §9).

Names, shapes and computation follow the published detection port (``swintransformer.py``): patch
embedding (4x4 conv + LayerNorm), four stages of pre-norm blocks with windowed multi-head attention
and a relative position bias, every second block on windows shifted by ws // 2 (with the published
shift mask), patch merging between stages, and a LayerNorm per output (``norm0``..``norm3``). Its
quirks are kept: maps are zero-padded to window multiples *after* norm1, the padding tokens are never
masked (unshifted blocks attend to them too), and the shift mask is -100, not -inf.

Attention goes through ``scaled_dot_product_attention`` (fused kernels on GPUs) with the relative
position bias, plus the shift mask in shifted blocks, as an additive float mask; q is pre-scaled by
head_dim^-0.5 as the published code does and passed with ``scale=1.0``, so the logits are the same
products; the fused kernel still rounds differently (about 1e-6 relative at Swin-B). The published
mode (:func:`diffdet.set_backend`) runs the published arithmetic instead, op for op: q·kᵀ, + bias,
+ mask, softmax, @ v.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffdet.modeling.backbone.swin_windows import (
    relative_position_index,
    shift_mask,
    window_order,
    window_padding,
)
from diffdet.modeling.shape_spec import ShapeSpec
from diffdet.ops._backend import published_mode


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``): in training, each image's residual branch is
    zeroed with probability p and the kept ones are scaled by 1 / (1 - p); identity in eval mode.

    Args:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[B, ...]) -> same shape; one Bernoulli draw per image from the global RNG."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear(C, hidden) -> GELU (erf) -> Linear(hidden, C); the published dropouts are p = 0."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    Args:
        dim: channels C of the tokens.
        window: window side ws (N = ws² tokens per window).
        num_heads: heads h; C must be divisible by h.

    State: ``relative_position_bias_table`` [(2ws - 1)², h] (parameter), ``relative_position_index``
    [N, N] int64 (persistent buffer, as in the published checkpoints), ``qkv`` Linear(C, 3C) with bias,
    output channels [q | k | v] each head-major, and ``proj`` Linear(C, C).
    """

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        _trunc_normal(self.relative_position_bias_table)

    def position_bias(self) -> Tensor:
        """The bias added to every window's logits: Tensor[h, N, N], bias[k, p, q] = table[index[p, q], k]."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention within each window.

        Args:
            x (Tensor[B·nW, N, C]): windows, image-major (see
                :func:`~diffdet.modeling.backbone.swin_windows.window_partition`).
            mask (Tensor[nW, N, N] | None): additive shift mask, the same for every image.

        Returns:
            Tensor[B·nW, N, C].
        """
        if published_mode():
            return self._published_forward(x, mask)
        windows, n, c = x.shape
        h = self.num_heads
        # One copy to [3, B·nW, h, N, d] contiguous: q, k and v then reshape to any batch split for free.
        qkv = self.qkv(x).view(windows, n, 3, h, c // h).permute(2, 0, 3, 1, 4).contiguous()
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        # 4-D float masks let the CPU take its fused (flash) kernel rather than the math one.
        bias = self.position_bias().to(q.dtype)[None]  # [1, h, N, N]
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        else:
            # Fold the window index into the head dimension so that one [1, nW·h, N, N] mask
            # broadcasts over the images: q [B, nW·h, N, d].
            nw = mask.shape[0]
            full = (mask.to(q.dtype)[:, None] + bias).reshape(1, nw * h, n, n)
            shape = (windows // nw, nw * h, n, c // h)
            out = F.scaled_dot_product_attention(
                q.view(shape), k.view(shape), v.view(shape), attn_mask=full, scale=1.0
            ).view(windows, h, n, c // h)
        return self.proj(out.transpose(1, 2).reshape(windows, n, c))

    def _published_forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """The published ``WindowAttention.forward``, op for op and layout for layout (bitwise equal
        to it): explicit q·kᵀ with q scaled first, the bias then the mask added, softmax, @ v."""
        windows, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(windows, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn + self.position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(windows // nw, nw, h, n, n) + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, h, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(windows, n, c))


class SwinBlock(nn.Module):
    """Pre-norm Swin block: x + attn(windows(norm1(x))), then x + mlp(norm2(x)).

    Args:
        dim: channels C.
        num_heads: attention heads.
        window: window side ws.
        shift: cyclic shift s of the windows (0 or ws // 2).
        drop_path: stochastic-depth rate of both residual branches (0 gives Identity).
        mlp_ratio: hidden width of the MLP over C.
    """

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: int, drop_path: float, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: Tensor, height: int, width: int, mask: Tensor, order: Tensor, back: Tensor
    ) -> Tensor:
        """One block on a stage's tokens.

        Args:
            x (Tensor[B, H·W, C]): row-major tokens of an H x W grid.
            mask (Tensor[nW, N, N]): the stage's shift mask (used only when this block shifts).
            order, back: this block's window gathers (see
                :func:`~diffdet.modeling.backbone.swin_windows.window_order`).

        Returns:
            Tensor[B, H·W, C].
        """
        b, _, c = x.shape
        ws = self.window
        y = self.norm1(x).view(b, height, width, c)
        # Padded after the norm: pad tokens are exact zeros (their k and v are the qkv bias).
        y = F.pad(y, (0, 0, 0, window_padding(width, ws), 0, window_padding(height, ws)))
        # The published roll + partition (and merge + roll back + crop) as one gather each.
        windows = y.view(b, -1, c).index_select(1, order).view(-1, ws * ws, c)
        y = self.attn(windows, mask if self.shift else None).view(b, -1, c).index_select(1, back)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 token merging: concat (even row, even col), (odd, even), (even, odd), (odd, odd) -> 4C,
    LayerNorm(4C), Linear(4C, 2C) without bias. Odd grids get a zero row/column first."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """Tensor[B, H·W, C] -> Tensor[B, ceil(H/2)·ceil(W/2), 2C]."""
        b, _, c = x.shape
        x = x.view(b, height, width, c)
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class PatchEmbed(nn.Module):
    """Conv2d(3, C, 4, stride 4) then LayerNorm over C (the input is zero-padded right, then bottom,
    to multiples of the patch size)."""

    def __init__(self, embed_dim: int, patch_size: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Tensor[B, 3, H, W] -> (tokens Tensor[B, Wh·Ww, C] row-major, Wh, Ww)."""
        p = self.patch_size
        if x.shape[-1] % p:
            x = F.pad(x, (0, p - x.shape[-1] % p))
        if x.shape[-2] % p:
            x = F.pad(x, (0, 0, 0, p - x.shape[-2] % p))
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class SwinStage(nn.Module):
    """One stage (published ``BasicLayer``): ``blocks`` alternating unshifted and shifted windows,
    then an optional :class:`PatchMerging` (``downsample``)."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: int, drop_path: Sequence[float], downsample: bool
    ) -> None:
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else window // 2, drop_path[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """Tensor[B, H·W, C] -> the stage output before downsampling, Tensor[B, H·W, C]."""
        mask = shift_mask(height, width, self.window, self.shift, device=x.device)
        gathers = [window_order(height, width, self.window, s, device=x.device) for s in (0, self.shift)]
        for block in self.blocks:
            x = block(x, height, width, mask, *gathers[block.shift > 0])
        return x


class SwinTransformer(nn.Module):
    """The Swin trunk, outputs ``swin{i}`` (C·2^i channels, stride 2^(i+2)) for i in ``out_indices``.

    Args:
        embed_dim: C, channels of stage 0.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window: window side ws (7, or 12 for the 384 variants).
        drop_path_rate: stochastic depth; block k of all Σdepths gets rate linspace(0, rate, Σdepths)[k].
        out_indices: stages returned (each gets a LayerNorm ``norm{i}``).
        patch_size: side of the patch embedding (4).

    Initialised as the published ``init_weights``: every Linear truncated normal (std 0.02) with bias 0,
    every LayerNorm weight 1 and bias 0, bias tables truncated normal (std 0.02), patch conv PyTorch's
    default. Every parameter trains (the published builder freezes nothing).

    Raises:
        ValueError: depths and num_heads differ in length, or an out index is not a stage.
    """

    def __init__(
        self,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window: int = 7,
        drop_path_rate: float = 0.2,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths and num_heads must have one entry per stage, got {depths}, {num_heads}")
        if not out_indices or any(not 0 <= i < len(depths) for i in out_indices):
            raise ValueError(f"out_indices must be stages in [0, {len(depths)}), got {tuple(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(embed_dim, patch_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        widths = [embed_dim * 2**i for i in range(len(depths))]
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            first = sum(depths[:i])
            stage = SwinStage(
                widths[i], depth, heads, window, rates[first : first + depth], i < len(depths) - 1
            )
            self.layers.append(stage)
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(widths[i]))
        self._out_shapes = {
            f"swin{i}": ShapeSpec(channels=widths[i], stride=patch_size * 2**i) for i in self.out_indices
        }
        self.apply(_init_weights)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output, finest first."""
        return dict(self._out_shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Tensor[B, 3, H, W] normalised images -> dict ``swin{i}`` -> Tensor[B, C·2^i, ceil(H/2^(i+2)),
        ceil(W/2^(i+2))] (contiguous NCHW)."""
        x, height, width = self.patch_embed(x)
        outputs = {}
        for i, stage in enumerate(self.layers):
            x = stage(x, height, width)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(x)
                b, _, c = out.shape
                outputs[f"swin{i}"] = out.view(b, height, width, c).permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None:
                x = stage.downsample(x, height, width)
                height, width = (height + 1) // 2, (width + 1) // 2
        return outputs


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        _trunc_normal(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def _trunc_normal(tensor: Tensor, std: float = 0.02, bound: float = 2.0) -> None:
    """timm's ``trunc_normal_(std=0.02)``: a normal cut at ±2 (absolute), i.e. at ±100 std, which no
    float32 draw reaches in practice, so a clamped normal draw has the same distribution (and costs two
    passes over the weights instead of five: loading a checkpoint builds the model first)."""
    tensor.normal_(0.0, std).clamp_(-bound, bound)
