"""The one Python face of every diffdet op, each beside its plain-PyTorch reference.

Every op validates its inputs, picks a backend by device (see :mod:`diffdet.ops._backend`) and
registers fake kernels and autograd so it runs under ``torch.compile``. ``OP_BACKENDS`` names the
fast backend each op prefers per device type; anything missing falls back to the reference.
"""

from diffdet.ops.batched_nms import batched_nms, batched_nms_padded, batched_nms_reference
from diffdet.ops.ddim_renewal_step import ddim_renewal_step, ddim_renewal_step_reference
from diffdet.ops.dynamic_conv import dynamic_conv, dynamic_conv_reference
from diffdet.ops.roi_align_multilevel import roi_align_multilevel, roi_align_multilevel_reference

OP_BACKENDS: dict[str, dict[str, str]] = {
    "roi_align_multilevel": {"cpu": "compiled", "cuda": "compiled"},
    "batched_nms": {"cpu": "compiled", "cuda": "compiled"},
    "dynamic_conv": {"cuda": "triton"},
    "ddim_renewal_step": {"cuda": "triton"},
}

__all__ = [
    "OP_BACKENDS",
    "batched_nms",
    "batched_nms_padded",
    "batched_nms_reference",
    "ddim_renewal_step",
    "ddim_renewal_step_reference",
    "dynamic_conv",
    "dynamic_conv_reference",
    "roi_align_multilevel",
    "roi_align_multilevel_reference",
]
