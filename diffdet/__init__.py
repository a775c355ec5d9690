"""diffdet: fast, faithful DiffusionDet.

Object detection as a denoising diffusion process from random boxes to object boxes, with custom
C++/CUDA (RoIAlign, NMS) and Triton (dynamic conv, DDIM + box renewal) kernels under a thin PyTorch
model. ``diffdet.load(path_or_preset)`` returns a ready detector; ``diffdet.export(model, path)``
writes it as an ONNX or torch.export graph; ``diffdet.set_backend("published")`` (or
``DIFFDET_BACKEND=published``) runs the published DiffusionDet computation instead of the fast one
(see docs/backends.md).
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # Heavy submodules load on first use so that `import diffdet` and `diffdet --help` stay fast.
    if name == "load":
        from diffdet.checkpoint import load

        return load
    if name == "set_backend":
        from diffdet.ops._backend import set_backend

        return set_backend
    if name == "export":  # the package diffdet.export, callable as diffdet.export(model, path, ...)
        import diffdet.export

        return diffdet.export
    raise AttributeError(f"module 'diffdet' has no attribute {name!r}")
