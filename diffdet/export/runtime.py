"""An exported detector behind the model's call contract: ``load_exported(path)(images, seed=0)``.

:class:`ExportedDetector` is what ``diffdet detect``, ``eval`` and ``bench`` call when ``--weights``
names an exported file: ``model(images, num_boxes=None, steps=None, seed=0)`` returns one dict per
image (``boxes`` [n, 4] float32 xyxy original-image pixels, ``scores`` [n], ``labels`` [n] int64),
as :class:`~diffdet.modeling.detector.DiffusionDet` does. The sampler's noise is drawn on the CPU with
:func:`~diffdet.modeling.sampler.draw_noise` from the same seeded generator as the PyTorch model's, so a
seed gives the PyTorch model's detections.

The graph has fixed shapes (see :mod:`diffdet.export`) and does the model's own preprocessing of an
image of the export size (its test-time resize, normalisation, padding), so images of the export size
get the PyTorch model's detections. An image of another size is first resized to the export size by
stretching (both sides scaled independently; PyTorch's uint8 bilinear antialiased resize) and its
boxes are mapped back to its own pixels: detections of such images are close to, not equal to, the
model's. A batch larger than the export runs in chunks of
the export batch; a smaller one is padded with copies of its last image. Knobs baked into the graph
(``num_boxes``, ``steps``, ``renewal_threshold``, ``nms_iou``, ``ensemble``) may only be asked for at
their exported value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffdet.errors import InputError
from diffdet.export.backends import Engine, open_engine
from diffdet.export.metadata import read_metadata
from diffdet.modeling.preprocess import as_image_list, postprocess_boxes
from diffdet.modeling.sampler import Generators, draw_noise

SUFFIXES = (".onnx", ".pt2")


def is_exported(path: str | Path) -> bool:
    """True when ``path`` names an exported graph (by its suffix: ``.onnx`` or ``.pt2``)."""
    return Path(path).suffix.lower() in SUFFIXES


@dataclass(frozen=True)
class ExportedConfig:
    """The part of a model's config that evaluation and detection read, from the export's metadata:
    the exported boxes and steps, and the export size as the test resize bounds (images are stretched
    to it)."""

    num_proposals: int
    sample_steps: int
    min_size_test: int
    max_size_test: int


class ExportedDetector:
    """An exported graph with the detector's call contract (see the module docstring).

    Args:
        engine: the loaded graph.
        metadata: the file's ``"diffdet"`` metadata (export size, batch, knobs, classes).
        path: the file (named in messages).
        runtime: the engine's name (``"onnxruntime"``, ``"openvino"``, ``"torch"``).
    """

    def __init__(self, engine: Engine, metadata: dict, path: Path, runtime: str) -> None:
        self.engine = engine
        self.metadata = metadata
        self.path = path
        self.runtime = runtime
        self.size = (int(metadata["height"]), int(metadata["width"]))
        self.batch = int(metadata["batch"])
        self.num_boxes = int(metadata["num_boxes"])
        self.steps = int(metadata["steps"])
        self.training = False
        self.device = torch.device("cpu")
        self.cfg = ExportedConfig(self.num_boxes, self.steps, min(self.size), max(self.size))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each contiguous label."""
        return tuple(self.metadata["class_names"])

    @property
    def category_ids(self) -> tuple[int, ...]:
        """Dataset category id of each contiguous label."""
        return tuple(int(i) for i in self.metadata["category_ids"])

    def eval(self) -> ExportedDetector:
        """No-op (a graph has no training mode); returns ``self``."""
        return self

    def train(self, mode: bool = True) -> ExportedDetector:
        """Refuses training mode; returns ``self`` otherwise.

        Raises:
            InputError: ``mode`` is True.
        """
        if mode:
            raise InputError(f"{self.path}: an exported detector cannot train")
        return self

    def to(self, *args: object, **kwargs: object) -> ExportedDetector:
        """No-op (the engine keeps its device and dtype); returns ``self``."""
        return self

    def __repr__(self) -> str:
        h, w = self.size
        return (
            f"ExportedDetector({self.path.name}, runtime={self.runtime}, size={h}x{w}, batch={self.batch}, "
            f"num_boxes={self.num_boxes}, steps={self.steps})"
        )

    def _check_knobs(self, **asked: object) -> None:
        """Refuse a knob asked for at another value than the exported one (None: the exported one)."""
        flags = {"num_boxes": "--boxes", "steps": "--steps"}
        for name, value in asked.items():
            exported = self.metadata.get(name, "all" if name == "ensemble" else None)
            if value is None or value == exported:
                continue
            if (
                isinstance(exported, float)
                and isinstance(value, (int, float))
                and abs(value - exported) < 1e-9
            ):
                continue
            flag = flags.get(name, name)
            raise InputError(
                f"{flag} {value}: {self.path.name} was exported with {name}={exported} "
                f"(export again with the value wanted)"
            )

    def __call__(
        self,
        images: Tensor | Sequence[Tensor],
        *,
        num_boxes: int | None = None,
        steps: int | None = None,
        renewal_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
        seed: int | None = None,
        generator: Generators = None,
        ensemble: str = "all",
    ) -> list[dict[str, Tensor]]:
        """Detect; arguments and results as :meth:`DiffusionDet.forward <diffdet.modeling.detector.
        DiffusionDet.forward>` in eval mode (float images are rounded to uint8, the graph's input).

        Raises:
            InputError: a knob differs from the exported one, or ``max_detections`` is above the
                exported cap.
            ValueError: bad images (the message names the image).
        """
        self._check_knobs(
            num_boxes=num_boxes, steps=steps, renewal_threshold=renewal_threshold, nms_iou=nms_iou,
            ensemble=ensemble,
        )  # fmt: skip
        cap = self.metadata.get("max_detections")
        if max_detections is not None and cap is not None and max_detections > cap:
            raise InputError(
                f"max_detections {max_detections}: {self.path.name} keeps at most {cap} per image"
            )
        image_list = as_image_list(images)
        if not image_list:
            return []
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        noise = draw_noise(2 * self.steps - 1, len(image_list), self.num_boxes, self.device, generator)
        results = []
        for start in range(0, len(image_list), self.batch):
            chunk = image_list[start : start + self.batch]
            results += self._run_chunk(chunk, noise[:, start : start + self.batch], max_detections)
        return results

    def _run_chunk(self, chunk: list[Tensor], noise: Tensor, max_detections: int | None) -> list[dict]:
        """One graph call on at most ``batch`` images (padded with copies of the last)."""
        pixels = [self._to_export_size(im) for im in chunk]
        pad = self.batch - len(chunk)
        if pad:
            pixels += [pixels[-1]] * pad
            noise = torch.cat([noise, noise[:, -1:].expand(-1, pad, -1, -1)], dim=1)
        boxes, scores, labels, counts = self.engine.run(
            torch.stack(pixels).numpy(), np.ascontiguousarray(noise.numpy(), dtype=np.float32)
        )
        out = []
        for i, image in enumerate(chunk):
            n = int(counts[i]) if max_detections is None else min(int(counts[i]), max_detections)
            mapped, keep = postprocess_boxes(
                torch.from_numpy(np.asarray(boxes[i, :n], dtype=np.float32)),
                self.size,
                (int(image.shape[1]), int(image.shape[2])),
            )
            out.append({
                "boxes": mapped[keep],
                "scores": torch.from_numpy(np.asarray(scores[i, :n], dtype=np.float32))[keep],
                "labels": torch.from_numpy(np.asarray(labels[i, :n], dtype=np.int64))[keep],
            })  # fmt: skip
        return out

    def _to_export_size(self, image: Tensor) -> Tensor:
        """[3, h, w] -> uint8 [3, H, W] on the CPU (the export size), stretched when the sizes differ."""
        image = image.cpu()
        if image.dtype != torch.uint8:
            image = (image.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        if tuple(image.shape[1:]) == self.size:
            return image.contiguous()
        resized = F.interpolate(
            image[None], size=self.size, mode="bilinear", antialias=True, align_corners=False
        )
        return resized[0]


def load_exported(path: str | Path, runtime: str | None = None, threads: int | None = None,
                  device: str = "cpu") -> ExportedDetector:  # fmt: skip
    """Load an exported detector.

    Args:
        path: a ``.onnx`` file (runs in ONNX Runtime by default) or ``.pt2`` file (PyTorch).
        runtime: ``"onnxruntime"``, ``"openvino"`` (``.onnx``) or ``"torch"`` (``.pt2``); None picks by
            suffix.
        threads: CPU threads of the engine (None: its default).
        device: ``"cpu"``, or ``"cuda"`` (ONNX Runtime's TensorRT or CUDA provider).

    Returns:
        An :class:`ExportedDetector`.

    Raises:
        InputError: the file is missing, damaged or not an exported detector, or the runtime cannot
            run it.
        diffdet.optional.MissingDependencyError: the runtime's package is not installed.
    """
    path = Path(path)
    if not is_exported(path):
        raise InputError(f"{path}: not an exported detector (expected {' or '.join(SUFFIXES)})")
    runtime = runtime or ("torch" if path.suffix.lower() == ".pt2" else "onnxruntime")
    metadata = read_metadata(path)
    return ExportedDetector(open_engine(path, runtime, threads, device), metadata, path, runtime)
