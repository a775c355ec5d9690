"""The engines that run an exported graph: ONNX Runtime, OpenVINO, PyTorch (``torch.export``).

Each takes the graph's inputs as NumPy arrays (``images`` uint8 [N, 3, H, W] at the export size,
``noise`` float32 [2S - 1, N, P, 4]) and returns its four outputs as NumPy arrays (``boxes`` float32
[N, K, 4] xyxy export-size pixels, ``scores`` float32 [N, K], ``labels`` int64 [N, K],
``num_detections`` int64 [N]). Loading errors of a damaged file become InputError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from diffdet.errors import InputError
from diffdet.optional import require

OUTPUTS = ("boxes", "scores", "labels", "num_detections")
RUNTIMES = ("onnxruntime", "openvino", "torch")


class Engine(Protocol):
    """A loaded graph: ``run(images, noise) -> (boxes, scores, labels, num_detections)``."""

    def run(self, images: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ...]: ...


class OnnxRuntimeEngine:
    """An ``.onnx`` file in an ONNX Runtime session (CPU; CUDA or TensorRT providers when asked).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        providers: execution providers in order of preference (default: CPU).
    """

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        ort = require("onnxruntime", "onnxruntime", "running an exported .onnx file in ONNX Runtime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its optimizer's notes on each unfoldable node are noise
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises its own types (InvalidProtobuf, Fail...) for a damaged file
            raise InputError(f"{path}: ONNX Runtime cannot load it ({_first_line(err)})") from err

    def run(self, images: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(list(OUTPUTS), {"images": images, "noise": noise}))


class OpenVinoEngine:
    """An ``.onnx`` file compiled by OpenVINO for the CPU, in f32 by default (OpenVINO would pick bf16
    on CPUs with AMX or AVX512-BF16, which changes detections).

    Args:
        path: the ``.onnx`` file.
        threads: inference threads (None: OpenVINO's default).
        precision: ``"f32"``, or ``"bf16"`` (OpenVINO's bf16 inference on AMX / AVX512-BF16 CPUs; its
            detections differ from fp32's as eager bf16's do).
    """

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32") -> None:
        ov = require("openvino", "openvino", "running an exported .onnx file in OpenVINO")
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own for a damaged file
            raise InputError(f"{path}: OpenVINO cannot load it ({_first_line(err)})") from err
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(name) for name in OUTPUTS]

    def run(self, images: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ...]:
        results = self.request.infer({"images": images, "noise": noise})
        return tuple(np.asarray(results[o]) for o in self.outputs)


class TorchEngine:
    """A ``.pt2`` file (``torch.export.save``) run by PyTorch; diffdet's custom ops are registered first.

    Args:
        path: the ``.pt2`` file.
        threads: torch CPU threads (set process-wide; None leaves them).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import torch

        import diffdet.ops  # noqa: F401  (registers torch.ops.diffdet.*, which the graph calls)

        if threads:
            torch.set_num_threads(threads)
        try:
            self.module = torch.export.load(str(path)).module()
        except Exception as err:  # zip, pickle and schema errors alike mean the file is not usable
            raise InputError(f"{path}: torch.export cannot load it ({_first_line(err)})") from err

    def run(self, images: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        with torch.no_grad():
            out = self.module(torch.from_numpy(images), torch.from_numpy(noise))
        if isinstance(out, dict):
            out = [out[name] for name in OUTPUTS]
        return tuple(t.numpy() for t in out)


def open_engine(path: Path, runtime: str, threads: int | None = None, device: str = "cpu") -> Engine:
    """The engine ``runtime`` for ``path``.

    Args:
        path: ``.onnx`` (onnxruntime or openvino) or ``.pt2`` (torch).
        runtime: one of :data:`RUNTIMES`.
        threads: CPU threads (None: the engine's default).
        device: ``"cpu"``, or ``"cuda"`` for ONNX Runtime's TensorRT / CUDA providers.

    Raises:
        InputError: the runtime cannot run this kind of file, or the device is not available.
        diffdet.optional.MissingDependencyError: the runtime's package is not installed.
    """
    suffix = path.suffix.lower()
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    if (suffix == ".pt2") != (runtime == "torch"):
        wanted = "torch" if suffix == ".pt2" else "onnxruntime or openvino"
        raise InputError(f"--runtime {runtime} cannot run {path} (a {suffix} file runs in {wanted})")
    if device != "cpu" and runtime != "onnxruntime":
        raise InputError(f"--device {device}: exported files run on the CPU except in onnxruntime")
    if runtime == "onnxruntime":
        return OnnxRuntimeEngine(path, threads, providers=cuda_providers() if device != "cpu" else None)
    if runtime == "openvino":
        return OpenVinoEngine(path, threads)
    return TorchEngine(path, threads)


def cuda_providers() -> list[str]:
    """ONNX Runtime's GPU providers present here, TensorRT first, with the CPU as the last resort.

    Raises:
        InputError: this ONNX Runtime has no GPU provider.
    """
    ort = require("onnxruntime", "onnxruntime", "running an exported .onnx file in ONNX Runtime")
    available = ort.get_available_providers()
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not gpu:
        have = ", ".join(available)
        raise InputError(f"--device cuda: this onnxruntime has no CUDA or TensorRT provider (it has {have})")
    return [*gpu, "CPUExecutionProvider"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
