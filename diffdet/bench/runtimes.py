"""Exported runtimes in the benchmark grid: the detector exported at each grid point and timed in
ONNX Runtime, OpenVINO, ONNX Runtime on an int8 file, or PyTorch (``.pt2``), beside eager PyTorch.

A graph has fixed shapes, so each (num_boxes, steps, batch) point exports its own file (fp32, at the
grid's image size) into a scratch folder; the int8 file is that ONNX file dynamically quantized
(:func:`diffdet.export.quantize.quantize_int8`). Each runtime's call is the whole detection
(:class:`~diffdet.export.runtime.ExportedDetector`: noise, graph, boxes mapped back), timed as the
eager modes are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from diffdet.bench.settings import RUNTIMES
from diffdet.bench.timing import Clock
from diffdet.modeling.detector import DiffusionDet

Run = Callable[[], tuple[list[dict[str, Tensor]], dict[str, float]]]


def export_point(
    model: DiffusionDet, folder: Path, runtime: str, *, size: tuple[int, int], batch: int, num_boxes: int,
    steps: int,
) -> Path:  # fmt: skip
    """The file ``runtime`` runs for one grid point, exported into ``folder`` (reused when present).

    Returns:
        ``.onnx`` (onnxruntime, openvino), ``_int8.onnx`` (int8) or ``.pt2`` (torch) file.
    """
    from diffdet.export import export

    stem = f"p{num_boxes}_s{steps}_b{batch}"
    onnx_file = folder / f"{stem}.onnx"
    if runtime == "torch":
        path = folder / f"{stem}.pt2"
        if not path.exists():
            export(model, path, size=size, batch=batch, num_boxes=num_boxes, steps=steps)
        return path
    if not onnx_file.exists():
        export(model, onnx_file, size=size, batch=batch, num_boxes=num_boxes, steps=steps)
    if runtime != "int8":
        return onnx_file
    from diffdet.export.quantize import quantize_int8

    path = folder / f"{stem}_int8.onnx"
    if not path.exists():
        quantize_int8(onnx_file, path)
    return path


def runtime_runs(
    model: DiffusionDet, images: Sequence[Tensor], runtimes: Sequence[str], *, num_boxes: int, steps: int,
    seed: int, clock: Clock, folder: Path, threads: int | None = None,
) -> dict[str, Run]:  # fmt: skip
    """A timed detection per exported runtime (``eager`` excluded: it is the grid's fp32 mode).

    Args:
        model: the fp32 detector (exported, not modified).
        images: the grid's images, all of the grid's size.
        runtimes: names among :data:`RUNTIMES`.
        num_boxes, steps, seed: the grid point and the noise's seed.
        clock: the grid's clock.
        folder: scratch folder for the exported files.
        threads: CPU threads of each engine (None: its default).

    Returns:
        ``{runtime: run}``; each run returns (detections, {"total": ms}).
    """
    from diffdet.export.backends import OpenVinoEngine
    from diffdet.export.metadata import read_metadata
    from diffdet.export.runtime import ExportedDetector, load_exported

    size = (int(images[0].shape[1]), int(images[0].shape[2]))
    device = "cpu" if model.device.type == "cpu" else "cuda"
    runs = {}
    for name in runtimes:
        if name == "eager":
            continue
        path = export_point(
            model, folder, name, size=size, batch=len(images), num_boxes=num_boxes, steps=steps
        )
        if name == "openvino-bf16":
            engine = OpenVinoEngine(path, threads, precision="bf16")
            detector = ExportedDetector(engine, read_metadata(path), path, name)
        else:
            detector = load_exported(
                path, "onnxruntime" if name == "int8" else name, threads=threads, device=device
            )
        runs[name] = runtime_run(detector, list(images), seed, clock)
    return runs


def runtime_run(detector: Callable, images: list[Tensor], seed: int, clock: Clock) -> Run:
    """A timed call of ``detector(images, seed=seed)``: () -> (detections, {"total": ms})."""

    def run() -> tuple[list[dict[str, Tensor]], dict[str, float]]:
        start = clock.mark()
        detections = detector(images, seed=seed)
        end = clock.mark()
        clock.sync()
        return detections, {"total": clock.elapsed_ms(start, end)}

    return run


def check_runtimes(runtimes: Sequence[str]) -> list[str]:
    """``runtimes`` validated (names of :data:`RUNTIMES`).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"--runtimes must be among {','.join(RUNTIMES)}, got {','.join(unknown)}")
    return list(runtimes)
