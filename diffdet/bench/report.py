"""The grid's outputs: a terminal table, a JSON results file and the PNG plots."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from diffdet.bench.grid import published_comparison
from diffdet.bench.plot import MARKERS, PALETTE, Series, VLine, line_chart
from diffdet.bench.settings import BASELINES
from diffdet.hardware import cpu_model_name


def device_name(device: torch.device) -> str:
    """The card's name for CUDA devices, else the CPU's model name (with the threads torch uses)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model_name()} ({torch.get_num_threads()} threads)"


# Results files a benchmark run rewrites: changes there do not make the measured source "dirty".
RESULTS_DIR = "benchmarks/results"


def git_commit(root: Path | None = None) -> str | None:
    """The git commit of the checkout at ``root`` (default: this source tree's), with ``-dirty`` when
    tracked files outside ``benchmarks/results`` have uncommitted changes; None outside a git
    checkout (or before the first commit)."""
    root = root or Path(__file__).resolve().parents[2]
    head = _git(root, "rev-parse", "HEAD")
    if head is None:
        return None
    exclude = f":(exclude){RESULTS_DIR}"
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", exclude)
    return head + ("-dirty" if status else "")


def _git(root: Path, *args: str) -> str | None:
    """``git args`` run in ``root``: its stripped stdout, or None when git fails or is missing."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def format_table(records: list[dict], device: str, isa: str | None = None) -> str:
    """A fixed-width table of the grid, then the published figure beside ours.

    Columns: boxes, steps, batch, mode, backend, median and p90 ms, images/s, then per baseline the
    speed ratio to it and whether the detections match its rank by rank (else the share matched at IoU
    0.95; then the max box difference in pixels), for low-precision modes the share of the fp32 mode's
    detections matched at IoU 0.9 with the same label (exported runtimes too, after their speed ratio to
    the fp32 mode), AP. ``isa`` (see :func:`diffdet.hardware.cpu_isa`) goes in the title.
    """
    baselines = [b for b in BASELINES if any(r["backend"] == b for r in records)]
    low = any("vs_fp32" in r for r in records)
    head = (
        f"{'boxes':>6} {'steps':>5} {'batch':>5} {'mode':<14}{'backend':<10}{'median ms':>10}{'p90 ms':>10}"
        f"{'img/s':>9}"
    )
    for b in baselines:
        head += f"{'x ' + b[:3]:>8}  {'same dets as ' + b[:3] + ' (box diff px)':<30}"
    runtimes = any("speedup_vs_fp32" in r for r in records)
    head += f"{'x fp32':>8}" if runtimes else ""
    head += f"{'fp32 dets @IoU.9':>17}" if low else ""
    head += f"{'AP':>6}"
    title = f"end-to-end detection on {device}" + (f", ISA {isa}" if isa else "")
    lines = [title, head, "-" * len(head)]
    for r in records:
        line = (
            f"{r['num_boxes']:>6} {r['steps']:>5} {r['batch']:>5} {r['mode']:<14}{r['backend']:<10}"
            f"{r['median_ms']:>10.2f}{r['p90_ms']:>10.2f}{r['fps']:>9.2f}"
        )
        for b in baselines:
            ratio, match = "-", "-"
            if f"vs_{b}" in r:
                v = r[f"vs_{b}"]
                same = "yes" if v["same_count"] and v["same_labels"] else f"NO, {v['matched']:.0%} matched"
                ratio, match = f"{r[f'speedup_vs_{b}']:.2f}", f"{same} ({v['max_box_diff']:.2g})"
            line += f"{ratio:>8}  {match:<30}"
        if runtimes:
            line += f"{format(r['speedup_vs_fp32'], '.2f') if 'speedup_vs_fp32' in r else '-':>8}"
        if low:
            line += f"{format(r['vs_fp32']['matched'], '.1%') if 'vs_fp32' in r else '-':>17}"
        ap = f"{100 * r['ap']['AP']:.1f}" if r.get("ap") else "-"
        lines.append(line + f"{ap:>6}")
    cmp = published_comparison(records)
    pub = cmp["published"]
    lines.append("")
    lines.append(
        f"published: {pub['fps']:.0f} FPS on one {pub['device']} (batch {pub['batch']}, {pub['backbone']}, "
        f"{pub['num_boxes']} boxes, {pub['steps']} step)"
    )
    if cmp["ours"] is not None:
        ours = cmp["ours"]
        lines.append(
            f"ours:      {ours['fps']:.1f} FPS on {device} (batch {ours['batch']}, {ours['mode']}, "
            f"{ours['num_boxes']} boxes, {ours['steps']} step)"
        )
    else:
        lines.append(
            f"ours:      not measured ({pub['num_boxes']} boxes x {pub['steps']} step is not in the grid)"
        )
    return "\n".join(lines)


def write_json(path: Path, records: list[dict], meta: dict) -> Path:
    """Write ``{"meta": ..., "published_comparison": ..., "records": [...]}`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "published_comparison": published_comparison(records), "records": records}
    path.write_text(json.dumps(payload, indent=2))
    return path


def _label(r: dict) -> str:
    return f"{r['mode']} {r['backend']}" if r["backend"] == "fast" else f"fp32 {r['backend']}"


def plot_fps(records: list[dict], path: Path, device: str) -> Path:
    """FPS against num_boxes (log axis): a colour per mode (and baseline), a marker per steps."""
    labels = list(dict.fromkeys(_label(r) for r in records))
    steps = sorted({r["steps"] for r in records})
    curves: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in records:
        curves.setdefault((_label(r), r["steps"]), []).append((r["num_boxes"], r["fps"]))
    series = [
        Series(
            f"{label}, {s} step{'s' * (s > 1)}",
            sorted(points),
            color=PALETTE[labels.index(label) % len(PALETTE)],
            marker=MARKERS[steps.index(s) % len(MARKERS)],
        )
        for (label, s), points in curves.items()
    ]
    title = f"DiffusionDet end-to-end speed, batch {records[0]['batch']}, {device}"
    return line_chart(series, path, title=title, xlabel="boxes (num_boxes)", ylabel="images / s", log_x=True)


def plot_ap(records: list[dict], path: Path, device: str) -> Path:
    """AP against FPS for the first fast mode: a curve per num_boxes, a point per steps (paper Fig. 3).

    The published 30 FPS (A100) is a dashed vertical line.
    """
    with_ap = [r for r in records if r.get("ap") and r["backend"] == "fast"]
    mode = with_ap[0]["mode"]
    series = []
    for p in sorted({r["num_boxes"] for r in with_ap}):
        points = sorted(
            (r for r in with_ap if r["num_boxes"] == p and r["mode"] == mode), key=lambda r: r["steps"]
        )
        series.append(
            Series(
                f"{p} boxes",
                [(r["fps"], 100 * r["ap"]["AP"]) for r in points],
                [f"{r['steps']}" for r in points],
            )
        )
    pub = published_comparison(records)["published"]
    vline = VLine(
        pub["fps"], f"published {pub['fps']:.0f} FPS ({pub['device']}, {pub['num_boxes']} boxes, 1 step)"
    )
    title = f"AP vs speed ({mode}, points labelled by steps), {device}"
    return line_chart(
        series, path, title=title, xlabel="images / s", ylabel="box AP", y_from_zero=False, vlines=[vline]
    )
