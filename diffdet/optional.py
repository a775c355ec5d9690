"""Optional dependencies, imported where they are needed, with an error that names what to install.

pycocotools is needed only to read COCO annotation files and score detections; the model, the ops,
``diffdet bench`` and the GPU suite run without it (a GPU machine may have no pycocotools and no
network to install it).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed; the message names it and the feature."""


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import ``module`` (from the pip package ``package``) for ``purpose``.

    Args:
        module: dotted module name, e.g. ``"pycocotools.cocoeval"``.
        package: the pip package that provides it, e.g. ``"pycocotools"``.
        purpose: what needs it, e.g. ``"COCO evaluation"`` (goes into the message).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: the module cannot be imported; the message names ``package``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the '{package}' package, which is not installed "
            f"(pip install {package}): importing {module} failed with: {err}"
        ) from err


def pycocotools(module: str, purpose: str) -> ModuleType:
    """``pycocotools.<module>`` (``"coco"`` or ``"cocoeval"``) for ``purpose``; see :func:`require`."""
    return require(f"pycocotools.{module}", "pycocotools", purpose)
