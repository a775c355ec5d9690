"""``ShapeSpec``: the channel count and stride a module publishes for each of its feature maps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Shape of one named feature map, as detectron2's ``ShapeSpec``.

    Attributes:
        channels: number of channels C of the map.
        stride: input-image pixels per feature-map cell (4 for p2, 32 for p5).
    """

    channels: int
    stride: int
