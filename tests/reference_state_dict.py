"""A synthetic state_dict with exactly the keys, shapes and dtypes of a reference DiffusionDet checkpoint.

Built from the shape rules of REFERENCE.md §3 (R50/R101), §9 (Swin) and §10 (LVIS), not from diffdet's
modules, so that loading it checks diffdet's names and shapes independently. Values are random (seeded);
the 12 diffusion buffers hold the reference's cosine schedule in float64, computed here with the
reference's own formulas.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

DIFFUSION_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

RES4_BLOCKS = {50: 6, 101: 23}

SWIN_B = {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "window": 7}
"""The published Swin B / B-22k size (REFERENCE.md §9 size table)."""


def reference_diffusion_buffers(timesteps: int = 1000, s: float = 0.008) -> dict[str, torch.Tensor]:
    """The reference's schedule buffers (detector.py: cosine_beta_schedule and __init__), float64 [T]."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = torch.clip(1 - (alphas_cumprod[1:] / alphas_cumprod[:-1]), 0, 0.999)
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.nn.functional.pad(ac[:-1], (1, 0), value=1.0)
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": torch.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": torch.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
        "posterior_mean_coef1": betas * torch.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * torch.sqrt(alphas) / (1.0 - ac),
    }


def _fpn_shapes(shapes: OrderedDict, channels: tuple[int, ...]) -> None:
    # detectron2's FPN registers its convs before assigning bottom_up.
    for level, c in zip((2, 3, 4, 5), channels, strict=True):
        shapes[f"backbone.fpn_lateral{level}.weight"] = (256, c, 1, 1)
        shapes[f"backbone.fpn_lateral{level}.bias"] = (256,)
        shapes[f"backbone.fpn_output{level}.weight"] = (256, 256, 3, 3)
        shapes[f"backbone.fpn_output{level}.bias"] = (256,)


def swin_trunk_shapes(
    embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...], window: int, prefix: str = ""
) -> OrderedDict[str, tuple[int, ...]]:
    """Key -> shape of a published Swin trunk's state_dict (REFERENCE.md §9), keys after ``prefix``.

    Order as the published modules register them: patch_embed, then per stage its blocks (norm1,
    attention table, index buffer, qkv, proj, norm2, mlp) and its downsample, then norm0..norm3.
    """
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    shapes[f"{prefix}patch_embed.proj.weight"] = (embed_dim, 3, 4, 4)
    shapes[f"{prefix}patch_embed.proj.bias"] = (embed_dim,)
    shapes[f"{prefix}patch_embed.norm.weight"] = (embed_dim,)
    shapes[f"{prefix}patch_embed.norm.bias"] = (embed_dim,)
    n = window * window
    for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        c = embed_dim * 2**i
        for j in range(depth):
            p = f"{prefix}layers.{i}.blocks.{j}."
            shapes[p + "norm1.weight"] = shapes[p + "norm1.bias"] = (c,)
            shapes[p + "attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, heads)
            shapes[p + "attn.relative_position_index"] = (n, n)
            shapes[p + "attn.qkv.weight"] = (3 * c, c)
            shapes[p + "attn.qkv.bias"] = (3 * c,)
            shapes[p + "attn.proj.weight"] = (c, c)
            shapes[p + "attn.proj.bias"] = (c,)
            shapes[p + "norm2.weight"] = shapes[p + "norm2.bias"] = (c,)
            shapes[p + "mlp.fc1.weight"] = (4 * c, c)
            shapes[p + "mlp.fc1.bias"] = (4 * c,)
            shapes[p + "mlp.fc2.weight"] = (c, 4 * c)
            shapes[p + "mlp.fc2.bias"] = (c,)
        if i < len(depths) - 1:
            shapes[f"{prefix}layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
            shapes[f"{prefix}layers.{i}.downsample.norm.weight"] = (4 * c,)
            shapes[f"{prefix}layers.{i}.downsample.norm.bias"] = (4 * c,)
    for i in range(len(depths)):
        shapes[f"{prefix}norm{i}.weight"] = shapes[f"{prefix}norm{i}.bias"] = (embed_dim * 2**i,)
    return shapes


def reference_relative_position_index(window: int) -> torch.Tensor:
    """index[p, q] = (r1 - r2 + ws - 1)·(2ws - 1) + (c1 - c2 + ws - 1), tokens row-major (REFERENCE.md §9)."""
    r, c = (
        torch.div(torch.arange(window * window), window, rounding_mode="floor"),
        torch.arange(window * window) % window,
    )
    return (r[:, None] - r[None, :] + window - 1) * (2 * window - 1) + (c[:, None] - c[None, :] + window - 1)


def reference_backbone_shapes(depth: int | str = 50) -> OrderedDict[str, tuple[int, ...]]:
    """Key -> shape of every ``backbone.*`` entry (281 for R50, 536 for R101, 373 for "swinb")."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    if depth == "swinb":
        _fpn_shapes(shapes, (128, 256, 512, 1024))
        shapes.update(swin_trunk_shapes(**SWIN_B, prefix="backbone.bottom_up."))
        return shapes
    _fpn_shapes(shapes, (256, 512, 1024, 2048))

    def conv(prefix: str, out_c: int, in_c: int, k: int) -> None:
        shapes[f"{prefix}.weight"] = (out_c, in_c, k, k)
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.norm.{buffer}"] = (out_c,)

    conv("backbone.bottom_up.stem.conv1", 64, 3, 7)
    in_c = 64
    stages = {2: (3, 64, 256), 3: (4, 128, 512), 4: (RES4_BLOCKS[depth], 256, 1024), 5: (3, 512, 2048)}
    for s, (blocks, b, o) in stages.items():
        for i in range(blocks):
            prefix = f"backbone.bottom_up.res{s}.{i}"
            if i == 0:
                conv(f"{prefix}.shortcut", o, in_c, 1)
            conv(f"{prefix}.conv1", b, in_c if i == 0 else o, 1)
            conv(f"{prefix}.conv2", b, b, 3)
            conv(f"{prefix}.conv3", o, b, 1)
        in_c = o
    return shapes


def reference_head_shapes(num_classes: int = 80, num_heads: int = 6) -> OrderedDict[str, tuple[int, ...]]:
    """Key -> shape of every ``head.*`` entry (42 per stage + 4 for time_mlp: 256 for 6 stages).

    Order as the reference registers them (head_series, then time_mlp; in DynamicConv: dynamic_layer,
    norm1, norm2, out_layer, norm3).
    """
    d, ff, dd, t = 256, 2048, 64, 1024
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    for k in range(num_heads):
        p = f"head.head_series.{k}."
        stage = [
            ("self_attn.in_proj_weight", (3 * d, d)),
            ("self_attn.in_proj_bias", (3 * d,)),
            ("self_attn.out_proj.weight", (d, d)),
            ("self_attn.out_proj.bias", (d,)),
            ("inst_interact.dynamic_layer.weight", (2 * d * dd, d)),
            ("inst_interact.dynamic_layer.bias", (2 * d * dd,)),
            ("inst_interact.norm1.weight", (dd,)),
            ("inst_interact.norm1.bias", (dd,)),
            ("inst_interact.norm2.weight", (d,)),
            ("inst_interact.norm2.bias", (d,)),
            ("inst_interact.out_layer.weight", (d, 49 * d)),
            ("inst_interact.out_layer.bias", (d,)),
            ("inst_interact.norm3.weight", (d,)),
            ("inst_interact.norm3.bias", (d,)),
            ("linear1.weight", (ff, d)),
            ("linear1.bias", (ff,)),
            ("linear2.weight", (d, ff)),
            ("linear2.bias", (d,)),
            ("norm1.weight", (d,)),
            ("norm1.bias", (d,)),
            ("norm2.weight", (d,)),
            ("norm2.bias", (d,)),
            ("norm3.weight", (d,)),
            ("norm3.bias", (d,)),
            ("block_time_mlp.1.weight", (2 * d, t)),
            ("block_time_mlp.1.bias", (2 * d,)),
            ("cls_module.0.weight", (d, d)),
            ("cls_module.1.weight", (d,)),
            ("cls_module.1.bias", (d,)),
        ]
        for i in (0, 3, 6):
            stage += [
                (f"reg_module.{i}.weight", (d, d)),
                (f"reg_module.{i + 1}.weight", (d,)),
                (f"reg_module.{i + 1}.bias", (d,)),
            ]
        stage += [
            ("class_logits.weight", (num_classes, d)),
            ("class_logits.bias", (num_classes,)),
            ("bboxes_delta.weight", (4, d)),
            ("bboxes_delta.bias", (4,)),
        ]
        shapes.update((p + name, shape) for name, shape in stage)
    # DynamicHead registers time_mlp after head_series.
    shapes["head.time_mlp.1.weight"] = (t, d)
    shapes["head.time_mlp.1.bias"] = (t,)
    shapes["head.time_mlp.3.weight"] = (t, t)
    shapes["head.time_mlp.3.bias"] = (t,)
    return shapes


def make_reference_state_dict(
    depth: int | str = 50, num_classes: int = 80, seed: int = 0, device: str = "cpu", fed_loss: bool = False
) -> OrderedDict:
    """A reference-layout state_dict (the ``"model"`` entry of a released checkpoint), random values.

    Order as the reference module registers them: the 12 float64 buffers, ``backbone.*``, ``head.*``,
    then (LVIS) ``criterion.fed_loss_cls_weights``. Backbone norms get positive ``running_var`` so that
    folding and normalising are well defined; Swin's ``relative_position_index`` buffers are int64 and
    hold the formula of REFERENCE.md §9.

    Args:
        depth: 50, 101, or "swinb" (Swin B-22k).
        num_classes: rows of every ``class_logits``.
        seed: seed of the random values.
        device: "cpu", or "meta" for shapes and dtypes only (no memory, no values).
        fed_loss: add the LVIS models' criterion buffer ``fed_loss_cls_weights`` [num_classes] float32
            (REFERENCE.md §10; values in [1, 44.5] as image_count^0.5).

    Returns:
        OrderedDict key -> Tensor: 549 keys for R50 with 80 classes (12 + 281 + 256), 641 for Swin-B,
        one more with ``fed_loss``.
    """
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict((k, v.to(device)) for k, v in reference_diffusion_buffers().items())
    shapes = reference_backbone_shapes(depth)
    shapes.update(reference_head_shapes(num_classes))
    if fed_loss:
        shapes["criterion.fed_loss_cls_weights"] = (num_classes,)
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            state[key] = reference_relative_position_index(SWIN_B["window"]).to(device)
        elif device == "meta":
            state[key] = torch.empty(shape, device="meta")
        elif key == "criterion.fed_loss_cls_weights":
            state[key] = torch.randint(1, 1978, shape, generator=gen).float() ** 0.5
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:  # uniform in [-0.05, 0.05): cheaper to draw than normal values, as distinct
            state[key] = (torch.rand(shape, generator=gen) - 0.5) * 0.1
    return state


def materialize(state: OrderedDict, seed: int = 0, pool: int = 1 << 24) -> OrderedDict:
    """Give a "meta" state_dict (see :func:`make_reference_state_dict`) cheap random values.

    Every floating tensor becomes a view into one shared random pool at its own offset, so tensors of
    the same shape still hold different values, but the whole state costs one pool to draw and to save
    (``torch.save`` writes a shared storage once): a Swin-B state_dict saves as 64 MiB instead of 700.
    The diffusion buffers get the reference schedule, index buffers their formula; every other value
    is uniform in [0, 1) (so running_var and the federated-loss weights are non-negative).

    Args:
        state: key -> tensor on "meta" (shapes and dtypes).
        seed: seed of the pool.
        pool: number of float32 values in the pool (at least the largest tensor).

    Returns:
        OrderedDict with the same keys, shapes and dtypes, on the CPU.
    """
    values = torch.rand(pool, generator=torch.Generator().manual_seed(seed))
    buffers = reference_diffusion_buffers()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    offset = 0
    for key, meta in state.items():
        if key in buffers:
            out[key] = buffers[key]
        elif key.endswith("relative_position_index"):
            out[key] = reference_relative_position_index(round(meta.shape[0] ** 0.5))
        else:
            n = meta.numel()
            if n > pool:
                raise ValueError(f"pool ({pool}) must hold the largest tensor, {key} has {n}")
            offset = (offset + 7919) % (pool - n + 1)
            out[key] = values[offset : offset + n].view(meta.shape)
    return out
