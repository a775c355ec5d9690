"""Line charts drawn with Pillow (no matplotlib): axes, ticks, grid, labelled series, legend.

Enough for the benchmark's two figures: FPS against num_boxes (a curve per mode and step count) and
AP against FPS (a curve per num_boxes, a labelled point per step count, the published figure as a
vertical reference line).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
"""Series colours, in order (matplotlib's tab10)."""

MARKERS = ("o", "s", "^", "D")
"""Point shapes: circle, square, triangle, diamond."""

WIDTH, HEIGHT = 960, 600
LEFT, RIGHT, TOP, BOTTOM = 80, 250, 50, 60  # plot-area margins in pixels (legend on the right)


@dataclass
class Series:
    """One curve.

    Attributes:
        label: legend text.
        points: (x, y) pairs in data units, drawn in the given order.
        point_labels: optional text beside each point (e.g. the step count).
        color: RGB; None takes the next colour of :data:`PALETTE`.
        marker: point shape, one of :data:`MARKERS`.
    """

    label: str
    points: list[tuple[float, float]]
    point_labels: list[str] = field(default_factory=list)
    color: tuple[int, int, int] | None = None
    marker: str = "o"


@dataclass
class VLine:
    """A vertical reference line at ``x`` with a caption (e.g. a published FPS)."""

    x: float
    label: str


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi].

    Raises:
        ValueError: ``hi`` < ``lo`` or a bound is not finite.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"lo and hi must be finite with lo <= hi, got {lo}, {hi}")
    if hi == lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, shape: str, color: tuple[int, int, int]) -> None:
    r = 4.5
    if shape == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=color)
    elif shape == "^":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=color)
    elif shape == "D":
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=color)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def line_chart(
    series: Sequence[Series],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    y_from_zero: bool = True,
    vlines: Sequence[VLine] = (),
) -> Path:
    """Draw ``series`` as a PNG line chart.

    Args:
        series: the curves; each gets the next colour of :data:`PALETTE` (cycled).
        path: output PNG file (parent directories are created).
        title: text above the plot.
        xlabel: x-axis caption, with units.
        ylabel: y-axis caption, with units.
        log_x: logarithmic x axis (ticks at the distinct x values of the data).
        y_from_zero: the y axis starts at 0 (else it fits the data).
        vlines: vertical reference lines (dashed, captioned).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: no point to draw, ``log_x`` with a non-positive x, or an unknown marker.
    """
    xs = [x for s in series for x, _ in s.points] + [v.x for v in vlines]
    ys = [y for s in series for _, y in s.points]
    if not ys:
        raise ValueError("series must hold at least one point")
    if log_x and min(xs) <= 0:
        raise ValueError("log_x needs positive x values")
    for s in series:
        if s.marker not in MARKERS:
            raise ValueError(f"marker must be one of {MARKERS}, got {s.marker!r}")
    xticks = sorted(set(xs)) if log_x else nice_ticks(min(xs), max(xs))
    yticks = nice_ticks(min(0.0, min(ys)) if y_from_zero else min(ys), max(ys))
    fx = math.log10 if log_x else float
    x0, x1 = fx(min(xticks)), fx(max(xticks))
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x0 == x1 else (x0 - 0.04 * (x1 - x0), x1 + 0.04 * (x1 - x0))
    y0, y1 = yticks[0], yticks[-1]
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def to_px(x: float, y: float) -> tuple[float, float]:
        return LEFT + (fx(x) - x0) / (x1 - x0) * pw, TOP + ph - (y - y0) / (y1 - y0) * ph

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    for y in yticks:
        _, py = to_px(xticks[0], y)
        draw.line([(LEFT, py), (LEFT + pw, py)], fill=(230, 230, 230))
        draw.text((LEFT - 6, py), _fmt(y), fill="black", font=small, anchor="rm")
    for x in xticks:
        px, _ = to_px(x, y0)
        draw.line([(px, TOP), (px, TOP + ph)], fill=(230, 230, 230))
        draw.text((px, TOP + ph + 6), _fmt(x), fill="black", font=small, anchor="ma")
    draw.rectangle([LEFT, TOP, LEFT + pw, TOP + ph], outline="black")
    draw.text((LEFT + pw / 2, 15), title, fill="black", font=font, anchor="ma")
    draw.text((LEFT + pw / 2, HEIGHT - 22), xlabel, fill="black", font=font, anchor="ma")
    label = Image.new("RGBA", (ph, 22), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((ph / 2, 2), ylabel, fill="black", font=font, anchor="ma")
    image.paste(label.rotate(90, expand=True), (12, TOP), label.rotate(90, expand=True))

    for v in vlines:
        px, _ = to_px(v.x, y0)
        for start in range(TOP, TOP + ph, 12):
            draw.line([(px, start), (px, min(start + 6, TOP + ph))], fill=(90, 90, 90), width=2)
        room = draw.textlength(v.label, font=small) + 8 < LEFT + pw - px
        draw.text(
            (px + 4 if room else px - 4, TOP + 4),
            v.label,
            fill=(90, 90, 90),
            font=small,
            anchor="la" if room else "ra",
        )

    legend_y = TOP
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        pixels = [to_px(x, y) for x, y in s.points]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for j, (px, py) in enumerate(pixels):
            _marker(draw, px, py, s.marker, color)
            if j < len(s.point_labels):
                draw.text((px + 6, py - 6), s.point_labels[j], fill=color, font=small, anchor="ls")
        lx = LEFT + pw + 15
        draw.line([(lx, legend_y + 8), (lx + 24, legend_y + 8)], fill=color, width=3)
        _marker(draw, lx + 12, legend_y + 8, s.marker, color)
        draw.text((lx + 30, legend_y), s.label, fill="black", font=small)
        legend_y += 20
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
