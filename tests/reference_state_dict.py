"""A synthetic state_dict with exactly the keys, shapes and dtypes of a reference DiffusionDet checkpoint.

Built from the shape rules of REFERENCE.md §3, not from diffdet's modules, so that loading it checks
diffdet's names and shapes independently. Values are random (seeded); the 12 diffusion buffers hold the
reference's cosine schedule in float64, computed here with the reference's own formulas.
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


def reference_backbone_shapes(depth: int = 50) -> OrderedDict[str, tuple[int, ...]]:
    """Key -> shape of every ``backbone.*`` entry (281 for R50, 536 for R101)."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    # detectron2's FPN registers its convs before assigning bottom_up.
    for level, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048), strict=True):
        shapes[f"backbone.fpn_lateral{level}.weight"] = (256, c, 1, 1)
        shapes[f"backbone.fpn_lateral{level}.bias"] = (256,)
        shapes[f"backbone.fpn_output{level}.weight"] = (256, 256, 3, 3)
        shapes[f"backbone.fpn_output{level}.bias"] = (256,)

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
    depth: int = 50, num_classes: int = 80, seed: int = 0, device: str = "cpu"
) -> OrderedDict:
    """A reference-layout state_dict (the ``"model"`` entry of a released checkpoint), random values.

    Order as the reference module registers them: the 12 float64 buffers, ``backbone.*``, ``head.*``.
    Backbone norms get positive ``running_var`` so that folding and normalising are well defined.

    Args:
        depth: 50 or 101.
        num_classes: rows of every ``class_logits``.
        seed: seed of the random values.
        device: "cpu", or "meta" for shapes and dtypes only (no memory, no values).

    Returns:
        OrderedDict key -> Tensor: 549 keys for R50 with 80 classes (12 + 281 + 256).
    """
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict((k, v.to(device)) for k, v in reference_diffusion_buffers().items())
    shapes = reference_backbone_shapes(depth)
    shapes.update(reference_head_shapes(num_classes))
    for key, shape in shapes.items():
        if device == "meta":
            state[key] = torch.empty(shape, device="meta")
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:  # uniform in [-0.05, 0.05): cheaper to draw than normal values, as distinct
            state[key] = (torch.rand(shape, generator=gen) - 0.5) * 0.1
    return state
