"""Triton kernels of diffdet, installed as ``diffdet.kernels`` (never imported as ``kernels``).

Each module is the GPU backend of the op of the same name in :mod:`diffdet.ops`, which validates the
inputs, registers autograd and fake kernels and calls the module's host launcher (``<op>_fwd``):
``dynamic_conv`` (fused instance interaction) and ``ddim_renewal_step`` (fused DDIM update and box
renewal). Modules here import nothing from ``diffdet.modeling``.
"""
