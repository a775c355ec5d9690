"""diffdet.export: a detector as a fixed-shape torch.export / ONNX graph with noise as an input.

``diffdet.export(model, "model.onnx", size=(800, 1216), num_boxes=300, steps=1)`` writes the file
(:func:`diffdet.export.exporter.export`, contract in its module doc); ``diffdet.export.read_metadata(path)``
reads back what a file was built for. The package is callable, so ``diffdet.export(...)`` and
``diffdet.export.export(...)`` are the same function.
"""

from __future__ import annotations

import sys
import types

from diffdet.export.exporter import INPUT_NAMES, OUTPUT_NAMES, export
from diffdet.export.metadata import FORMAT_VERSION, read_metadata

__all__ = ["FORMAT_VERSION", "INPUT_NAMES", "OUTPUT_NAMES", "export", "read_metadata"]


class _CallableModule(types.ModuleType):
    """``diffdet.export`` is both this package and its main function."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
