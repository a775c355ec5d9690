"""``DynamicConv``: the instance-interaction module of each head stage (REFERENCE.md §2.3).

Holds the parameters under the reference's names (``dynamic_layer``, ``norm1``, ``norm2``,
``out_layer``, ``norm3``) so checkpoints load by name; the computation after ``dynamic_layer`` is the
fused op :func:`diffdet.ops.dynamic_conv`.
"""

from __future__ import annotations

from torch import Tensor, nn

from diffdet.ops import dynamic_conv


class DynamicConv(nn.Module):
    """Per-proposal dynamic 1x1 convolutions over the pooled RoI features.

    Args:
        hidden_dim: channels C of the proposal and RoI features (256).
        dim_dynamic: inner width D (64).
        num_bins: S * S bins of the pooled RoI (49).
        num_dynamic: parameter sets produced by ``dynamic_layer``; must be 2.

    Raises:
        ValueError: ``num_dynamic`` is not 2.
    """

    def __init__(self, hidden_dim: int, dim_dynamic: int, num_bins: int, num_dynamic: int = 2) -> None:
        super().__init__()
        if num_dynamic != 2:
            raise ValueError(f"num_dynamic must be 2, got {num_dynamic}")
        self.hidden_dim = hidden_dim
        self.dim_dynamic = dim_dynamic
        self.dynamic_layer = nn.Linear(hidden_dim, num_dynamic * hidden_dim * dim_dynamic)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.out_layer = nn.Linear(hidden_dim * num_bins, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)

    def forward(self, pro_features: Tensor, roi_features: Tensor) -> Tensor:
        """Interact each proposal's feature with its own RoI.

        Args:
            pro_features (Tensor[K, C]): proposal features, K = B * P.
            roi_features (Tensor[K, S*S, C]): pooled RoI features, bin-major.

        Returns:
            Tensor[K, C] in ``roi_features``' dtype: ``ReLU(LN3(out_layer(flatten(...))))`` (see
            :func:`diffdet.ops.dynamic_conv`). Under autocast the op's parameters are cast to the RoI
            dtype, since the op takes one dtype for all its tensors.
        """
        dtype = roi_features.dtype
        params = self.dynamic_layer(pro_features).to(dtype)  # [K, 2 * C * D]
        weights = (
            self.norm1.weight,
            self.norm1.bias,
            self.norm2.weight,
            self.norm2.bias,
            self.out_layer.weight,
            self.out_layer.bias,
            self.norm3.weight,
            self.norm3.bias,
        )
        return dynamic_conv(roi_features, params, *(w.to(dtype) for w in weights), eps=self.norm1.eps)
