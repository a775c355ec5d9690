"""Triton kernels of diffdet, installed as ``diffdet.kernels`` (never imported as ``kernels``).

Each module is the GPU backend of the op of the same name in :mod:`diffdet.ops`, which validates the
inputs, registers autograd and fake kernels and calls the module's host launcher (``<op>_fwd``):
``dynamic_conv`` (fused instance interaction) and ``ddim_renewal_step`` (fused DDIM update and box
renewal). Modules here import nothing from ``diffdet.modeling``.
"""

import os

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    from . import _interpreter

    _interpreter.install()  # Triton <= 3.6's interpreter with NumPy >= 2.4 (see _interpreter.py)
