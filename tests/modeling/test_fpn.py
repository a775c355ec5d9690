"""FPN: reference names, output shapes, the top-down pathway against an independent formulation."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffdet.modeling.backbone import FPN, build_backbone, build_resnet
from diffdet.modeling.shape_spec import ShapeSpec


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    # Nearest x2 written as a repeat, independently of F.interpolate.
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def test_fpn_matches_hand_written_top_down_pathway():
    torch.manual_seed(0)
    fpn = build_backbone("R18").eval()
    for name, p in fpn.named_parameters():
        if name.startswith("fpn_") and name.endswith("bias"):
            torch.nn.init.normal_(p)  # c2_xavier_fill zeroes biases; make them count
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = fpn(x)
        c = fpn.bottom_up(x)
        lateral = {
            k: F.conv2d(
                c[f"res{k}"], getattr(fpn, f"fpn_lateral{k}").weight, getattr(fpn, f"fpn_lateral{k}").bias
            )
            for k in (2, 3, 4, 5)
        }
        m = {5: lateral[5]}
        for k in (4, 3, 2):  # FPN paper Fig. 3: m_k = lateral_k(c_k) + up2(m_{k+1})
            m[k] = lateral[k] + _upsample2(m[k + 1])
        for k in (2, 3, 4, 5):
            out = getattr(fpn, f"fpn_output{k}")
            expected = F.conv2d(m[k], out.weight, out.bias, padding=1)
            torch.testing.assert_close(got[f"p{k}"], expected, msg=f"p{k}")


def test_fpn_names_and_shapes_follow_the_reference():
    fpn = build_backbone("R50")
    state = fpn.state_dict()
    own = sorted(k for k in state if k.startswith("fpn_"))
    assert own == sorted(
        f"fpn_{kind}{k}.{p}"
        for kind in ("lateral", "output")
        for k in range(2, 6)
        for p in ("weight", "bias")
    )
    assert state["fpn_lateral5.weight"].shape == (256, 2048, 1, 1)
    assert state["fpn_output2.weight"].shape == (256, 256, 3, 3)
    assert len(state) == 281  # REFERENCE.md §3: the backbone's 281 keys
    assert fpn.output_shape() == {f"p{k}": ShapeSpec(256, 2**k) for k in range(2, 6)}
    assert fpn.size_divisibility == 32
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = fpn.eval()(x)
    assert list(out) == ["p2", "p3", "p4", "p5"]
    assert [tuple(v.shape) for v in out.values()] == [(1, 256, 64 // s, 96 // s) for s in (4, 8, 16, 32)]


def test_fpn_xavier_init_and_gn_variant_trains():
    fpn = build_backbone("R18", norm="GN", freeze_at=0, fpn_norm="GN", out_channels=64)
    lateral = fpn.fpn_lateral3
    assert lateral.bias is None and isinstance(lateral.norm, torch.nn.GroupNorm)
    bound = math.sqrt(3.0 / 128)  # kaiming_uniform(a=1): sqrt(6 / ((1 + a^2) fan_in)), fan_in 128
    assert lateral.weight.abs().max().item() <= bound
    assert lateral.weight.abs().max().item() > 0.9 * bound
    out = fpn(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in fpn.parameters())
    assert torch.all(build_backbone("R18").fpn_output4.bias == 0)


def test_fpn_rejects_bad_input_and_features():
    fpn = build_backbone("R18")
    with pytest.raises(ValueError, match="x must be"):
        fpn(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="x must be"):
        fpn(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="in_features"):
        FPN(build_resnet("R18"), in_features=("res2", "res6"))
    with pytest.raises(ValueError, match="in_features"):
        FPN(build_resnet("R18"), in_features=("res2", "res4"))
