"""FrozenBatchNorm2d (detectron2's semantics).

The reference backbone follows every trunk convolution with a batch norm whose statistics and affine
parameters are fixed: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, with eps 1e-5.
All four tensors are buffers, so they are saved in the state_dict but never trained; there is no
``num_batches_tracked`` (detectron2 checkpoints do not have one).

For inference the affine map is folded into the convolution's weight and bias
(:func:`diffdet.modeling.backbone.conv.fold_frozen_batchnorm`), which removes one elementwise pass
over every trunk feature map.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (detectron2 ``FrozenBatchNorm2d``).

    Args:
        num_features: number of channels C.
        eps: added to ``running_var`` before the square root (1e-5 in the reference).

    Buffers ``weight``, ``bias``, ``running_mean``, ``running_var`` are Tensor[C]. A fresh module is the
    identity map: weight 1, bias 0, mean 0 and var 1 - eps.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel affine map this norm applies.

        Args:
            dtype: compute in this dtype (the buffers' dtype when None).

        Returns:
            (scale, shift), each Tensor[C], with y = x * scale + shift.
        """
        buffers = (self.weight, self.bias, self.running_mean, self.running_var)
        weight, bias, mean, var = (t if dtype is None else t.to(dtype) for t in buffers)
        scale = weight * torch.rsqrt(var + self.eps)
        return scale, bias - mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the frozen affine map.

        Args:
            x (Tensor[B, C, H, W]): input feature map.

        Returns:
            Tensor[B, C, H, W] of x's dtype. Differentiable w.r.t. x only.
        """
        if x.requires_grad:
            # As detectron2: an explicit multiply-add, because F.batch_norm's backward in eval mode
            # would still compute gradients for weight and bias.
            scale, shift = self.scale_and_shift()
            return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every ``BatchNorm2d``/``SyncBatchNorm`` in ``module`` by a FrozenBatchNorm2d.

        The statistics and affine parameters are copied. Used when a stage with norm "BN" is frozen.

        Args:
            module: the module to convert (converted in place where it is not itself a batch norm).

        Returns:
            The converted module: a new FrozenBatchNorm2d if ``module`` is a batch norm, else ``module``.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            converted = cls.convert_frozen_batchnorm(child)
            if converted is not child:
                module.add_module(name, converted)
        return module
