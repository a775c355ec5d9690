"""The (num_boxes x steps) grid: FPS of every fast mode beside baseline op backends, and optional AP.

At each grid point the baselines (fp32, eager; ``set_backend("reference")``: the plain-PyTorch ops;
``set_backend("published")``: the published computation, its ops, NCHW unfolded backbone and Swin
attention, see :func:`diffdet.set_backend`) and then every fast mode (``set_backend("auto")``, whatever
``DIFFDET_BACKEND`` says) run back to back, so each
fast figure comes with its speed ratio to each baseline measured side by side, and with how far its
detections are from the baseline's (same images, same noise). The baselines run a copy of the model
whose backbone runs as the published code's does (:func:`published_copy`: NCHW, FrozenBN unfolded);
the fast modes run copies with the inference fusions on (:func:`folded_copy`: FrozenBN folded,
channels-last, oneDNN post-ops), in their dtype. A low-precision mode is also matched against the
fp32 mode (``vs_fp32``: the share of fp32 detections it finds at IoU 0.9 with the same label).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffdet.bench.pipeline import (
    check_modes,
    compare_detections,
    folded_copy,
    graph_runner,
    mode_dtype,
    published_copy,
    staged_detect,
)
from diffdet.bench.runtimes import check_runtimes, runtime_run, runtime_runs
from diffdet.bench.settings import PUBLISHED, GridSettings
from diffdet.bench.timing import Clock, percentile, summarize
from diffdet.modeling.detector import DiffusionDet

if TYPE_CHECKING:
    from diffdet.export.runtime import ExportedDetector
from diffdet.ops._backend import AUTO, set_backend


def synthetic_images(batch: int, size: tuple[int, int], seed: int, device: torch.device) -> list[Tensor]:
    """``batch`` uniform-noise RGB uint8 images [3, H, W] (speed does not depend on the content)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator).to(device)
        for _ in range(batch)
    ]


LOW_PRECISION_IOU = 0.9
"""IoU at which a bf16/fp16 detection counts as the same as an fp32 one (same label)."""

Run = Callable[[], tuple[list[dict[str, Tensor]], dict[str, float]]]
"""A timed detection: () -> (detections, milliseconds per component with ``total``)."""


def _eager(
    model: DiffusionDet, images: list[Tensor], p: int, s: int, seed: int, clock: Clock, backend: str | None
) -> Run:
    def run() -> tuple[list[dict[str, Tensor]], dict[str, float]]:
        with set_backend(backend or AUTO):
            return staged_detect(model, images, num_boxes=p, steps=s, seed=seed, clock=clock)

    return run


def _graph(model: DiffusionDet, images: list[Tensor], p: int, s: int, seed: int, clock: Clock) -> Run:
    with set_backend(AUTO):
        replay = graph_runner(model, images, num_boxes=p, steps=s, seed=seed)

    def run() -> tuple[list[dict[str, Tensor]], dict[str, float]]:
        start = clock.mark()
        with set_backend(AUTO):
            detections = replay()
        end = clock.mark()
        clock.sync()
        return detections, {"total": clock.elapsed_ms(start, end)}

    return run


def _measure(runs: dict[str, Run], warmup: int, iters: int) -> dict[str, tuple[list, dict, dict | None]]:
    """Warm every run up, then time them in turn, ``iters`` rounds (so a change in the machine's load
    hits every run alike); per run: (last detections, time summary, median per component or None)."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list] = {name: [] for name in runs}
    for _ in range(iters):
        for name, run in runs.items():
            samples[name].append(run())
    out = {}
    for name, results in samples.items():
        parts = [p for _, p in results]
        components = (
            {k: percentile([p[k] for p in parts], 50.0) for k in parts[0]} if len(parts[0]) > 1 else None
        )
        out[name] = (results[-1][0], summarize([p["total"] for p in parts]), components)
    return out


def _record(
    mode: str, backend: str, p: int, s: int, batch: int, stats: dict, components: dict | None
) -> dict:
    return {
        "mode": mode,
        "backend": backend,
        "num_boxes": p,
        "steps": s,
        "batch": batch,
        **stats,
        "fps": batch * 1e3 / stats["median_ms"],
        "components_ms": components,
    }


def run_grid(
    model: DiffusionDet, settings: GridSettings, progress: Callable[[str], None] | None = None
) -> list[dict]:
    """Measure every (num_boxes, steps) point in every mode (and the baseline backends).

    At each point every run is warmed up, then the runs are timed in turn, ``settings.iters`` rounds.

    Args:
        model: the detector, fp32, on the device to measure, with its test resize set to
            ``settings.size`` (see :func:`diffdet.cli.bench.prepare_model`); it is not modified.
        settings: the grid.
        progress: called with a short description before each grid point and each AP evaluation.

    Returns:
        One record per (point, mode), baseline records first at each point: ``mode``, ``backend``
        ("fast", or the baseline's name), ``num_boxes``, ``steps``, ``batch``, ``median_ms``, ``p90_ms``,
        ``min_ms``, ``mean_ms``, ``iters``, ``fps`` (images/s from the median), ``components_ms``
        (median per component; None for CUDA-graph modes), and for fast records per baseline B
        ``speedup_vs_B`` and ``vs_B`` (see :func:`~diffdet.bench.pipeline.compare_detections`),
        for bf16/fp16 modes beside an fp32 mode ``vs_fp32`` (matched at IoU :data:`LOW_PRECISION_IOU`),
        records of exported runtimes (``mode`` = the runtime's name, after the modes) with
        ``speedup_vs_fp32`` and ``vs_fp32`` beside the fp32 mode,
        ``ap`` (dict of
        COCO metrics) when ``settings.ap_fn`` is set (for graph modes measured eagerly on the same
        model: the graph replays the same computation).

    Raises:
        ValueError: a mode the device cannot run.
    """
    device = model.pixel_mean.device
    modes = check_modes(settings.modes, device)
    clock = Clock(device)
    images = synthetic_images(settings.batch, tuple(settings.size), settings.seed, device)
    published = published_copy(model)
    fp32 = folded_copy(model, torch.float32)
    variants = {
        m: fp32 if mode_dtype(m) == torch.float32 else folded_copy(model, mode_dtype(m)) for m in modes
    }
    records = []
    exported = [r for r in check_runtimes(settings.runtimes) if r != "eager"]
    with tempfile.TemporaryDirectory(prefix="diffdet-bench-") as scratch:
        for p in settings.boxes:
            for s in settings.steps:
                if progress:
                    progress(f"{p} boxes x {s} steps")
                runs = {
                    b: _eager(published, images, p, s, settings.seed, clock, b) for b in settings.baselines
                }
                for mode in modes:
                    if mode.startswith("graph"):
                        runs[mode] = _graph(variants[mode], images, p, s, settings.seed, clock)
                    else:
                        runs[mode] = _eager(variants[mode], images, p, s, settings.seed, clock, None)
                runs |= runtime_runs(
                    model, images, exported, num_boxes=p, steps=s, seed=settings.seed, clock=clock,
                    folder=Path(scratch), threads=torch.get_num_threads() if device.type == "cpu" else None,
                )  # fmt: skip
                records += _point_records(runs, modes, exported, variants, settings, p, s, progress)
    return records


def _point_records(
    runs: dict[str, Run], modes: list[str], exported: list[str], variants: dict[str, DiffusionDet],
    settings: GridSettings, p: int, s: int, progress: Callable[[str], None] | None,
) -> list[dict]:  # fmt: skip
    """Time one grid point's runs and turn them into records (baselines, modes, then runtimes)."""
    measured = _measure(runs, settings.warmup, settings.iters)
    records, baselines = [], {}
    for name in settings.baselines:
        dets, stats, components = measured[name]
        baselines[name] = (dets, _record("fp32", name, p, s, settings.batch, stats, components))
        records.append(baselines[name][1])
    for mode in [*modes, *exported]:
        dets, stats, components = measured[mode]
        record = _record(mode, "fast", p, s, settings.batch, stats, components)
        for name, (base_dets, base) in baselines.items():
            record[f"speedup_vs_{name}"] = base["median_ms"] / record["median_ms"]
            record[f"vs_{name}"] = compare_detections(dets, base_dets)
        if mode in exported and "fp32" in measured:
            record["speedup_vs_fp32"] = measured["fp32"][1]["median_ms"] / record["median_ms"]
        if (mode in exported or mode_dtype(mode) != torch.float32) and "fp32" in measured:
            record["vs_fp32"] = compare_detections(dets, measured["fp32"][0], match_iou=LOW_PRECISION_IOU)
        if settings.ap_fn is not None and mode in variants:
            if progress:
                progress(f"AP {mode} {p} boxes x {s} steps")
            record["ap"] = settings.ap_fn(variants[mode], p, s)
        records.append(record)
    return records


def published_comparison(records: list[dict]) -> dict:
    """The published figure beside ours at its setting (300 boxes, 1 step, batch 1), fastest fast mode.

    Returns:
        ``{"published": PUBLISHED, "ours": the fastest fast record at 300 x 1, batch 1, or None}``.
    """
    setting = (PUBLISHED["num_boxes"], PUBLISHED["steps"], PUBLISHED["batch"])
    ours = [
        r for r in records if r["backend"] == "fast" and (r["num_boxes"], r["steps"], r["batch"]) == setting
    ]
    return {"published": PUBLISHED, "ours": max(ours, key=lambda r: r["fps"]) if ours else None}


def check_exported_point(detector: ExportedDetector, settings: GridSettings) -> tuple[int, int]:
    """The exported file's (boxes, steps), the only grid point it can run.

    Raises:
        ValueError: the grid asks for other boxes or steps than the file's.
    """
    point = (detector.num_boxes, detector.steps)
    if {(p, s) for p in settings.boxes for s in settings.steps} != {point}:
        raise ValueError(
            f"--boxes/--steps: {detector.path.name} runs {point[0]} boxes x {point[1]} step(s) only"
        )
    return point


def run_exported(detector: ExportedDetector, settings: GridSettings) -> list[dict]:
    """Time an exported file (``diffdet bench --weights X.onnx``) at the one point it was exported for:
    its boxes, steps, batch and size; no baselines (there is no PyTorch model to run them).

    Raises:
        ValueError: the grid asks for other boxes or steps than the file's.
    """
    point = check_exported_point(detector, settings)
    clock = Clock(torch.device("cpu"))
    images = synthetic_images(detector.batch, detector.size, settings.seed, torch.device("cpu"))
    run = runtime_run(detector, images, settings.seed, clock)
    _, stats, _ = _measure({detector.runtime: run}, settings.warmup, settings.iters)[detector.runtime]
    return [_record(detector.runtime, "fast", *point, detector.batch, stats, None)]
