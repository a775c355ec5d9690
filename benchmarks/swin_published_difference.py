"""How far the fast Swin-B-FPN is from the published computation, on random weights (docs/backends.md).

Builds a Swin-B-FPN detector (seeded random weights, moved off their init so that LayerNorms and the
relative position bias tables matter), runs one uniform-noise image through the trunk and the FPN on
the fast path and under ``diffdet.set_backend("published")``, and prints per output
max|fast - published| / max|published|. The fast path differs only by float rounding (the fused
attention kernel, the channels-last FPN), so the figure is a few float32 ulps.

Run: ``python benchmarks/swin_published_difference.py [HxW]`` (default 320x544; fp32 on the CPU).
"""

from __future__ import annotations

import sys

import torch

from diffdet.modeling import ModelConfig, build_detector
from diffdet.ops._backend import set_backend


def relative_difference(fast: torch.Tensor, published: torch.Tensor) -> float:
    """max|fast - published| / max|published|."""
    return float((fast - published).abs().max() / published.abs().max())


@torch.no_grad()
def main(size: str = "320x544") -> None:
    height, width = (int(v) for v in size.split("x"))
    torch.manual_seed(0)
    model = build_detector(ModelConfig(backbone="SwinB", min_size_test=height, max_size_test=width)).eval()
    gen = torch.Generator().manual_seed(1)
    for name, p in model.backbone.named_parameters():
        p.add_(torch.randn(p.shape, generator=gen) * (0.5 if "bias_table" in name else 0.05))
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    batch = model.preprocess([image], resize=True)
    with set_backend("auto"):
        trunk_fast = model.backbone.bottom_up(batch.tensor)
        fpn_fast = model.features(batch.tensor)
    with set_backend("published"):
        trunk_published = model.backbone.bottom_up(batch.tensor)
        fpn_published = model.features(batch.tensor)
    print(f"Swin-B-FPN, random weights, {height}x{width}, fp32, {torch.get_num_threads()} threads")
    for name, published in trunk_published.items():
        rel = relative_difference(trunk_fast[name], published)
        print(f"{name:6} {tuple(published.shape)!s:22} {rel:.1e}")
    for level, (fast, published) in enumerate(zip(fpn_fast, fpn_published, strict=True)):
        print(f"p{level + 2:<5} {tuple(published.shape)!s:22} {relative_difference(fast, published):.1e}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
