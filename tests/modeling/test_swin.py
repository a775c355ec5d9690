"""Swin Transformer backbone: equal to the transcription of the published forward, its windows and masks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import published_swin
from reference_state_dict import reference_backbone_shapes, reference_relative_position_index

from diffdet.modeling.backbone import SWINS, build_backbone, build_swin
from diffdet.modeling.backbone.swin import DropPath, PatchMerging, SwinTransformer, WindowAttention
from diffdet.modeling.backbone.swin_windows import shift_mask, window_order, window_padding

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
"""A Swin small enough for a 2-core CPU at detection sizes: every stage has a shifted block."""


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (LayerNorms away from 1/0, bias tables well above 0.02),
    so that a wrong norm, bias index or mask would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "relative_position_bias_table" in name else 0.05
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _pair(**kwargs) -> tuple[SwinTransformer, published_swin.SwinTransformer]:
    torch.manual_seed(0)
    ours = _perturbed(SwinTransformer(**kwargs)).eval()
    kwargs.pop("drop_path_rate", None)
    theirs = published_swin.SwinTransformer(**kwargs).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def _assert_outputs_equal(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert ours[name].shape == value.shape, name
        assert ours[name].is_contiguous(), name
        # fp32 rounding only: the attention runs through SDPA instead of explicit matmuls.
        scale = float(value.abs().max())
        torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize(("batch", "height", "width"), [(2, 600, 904), (1, 800, 1216)])
def test_swin_equals_the_published_forward(batch, height, width):
    # Token grids 150x226, 75x113, 38x57, 19x29 (600x904: odd grids, so patch merging pads too) and
    # 200x304 .. 25x38 (800x1216, REFERENCE.md §9): every stage pads to the window, so masked, shifted
    # and unmasked padded windows all take part.
    sizes = [(-(-height // 2**k), -(-width // 2**k)) for k in range(2, 6)]
    assert all(window_padding(h, 7) and window_padding(w, 7) for h, w in sizes)
    ours, theirs = _pair(**SMALL)
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_outputs_equal(ours(x), theirs(x))


def test_swin_b_equals_the_published_forward_at_a_small_image():
    ours, theirs = _pair(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    # 24x40 .. 3x5 tokens: padded stages 0-3, a 1x1 window grid in stage 3 (shift mask all zero).
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_outputs_equal(ours(x), theirs(x))


def test_window_attention_equals_the_published_one_with_and_without_mask():
    torch.manual_seed(0)
    ours = _perturbed(WindowAttention(64, 7, 2))
    theirs = published_swin.WindowAttention(64, 7, 2)
    theirs.load_state_dict(ours.state_dict())
    mask = shift_mask(14, 21, 7, 3)  # 6 windows
    x = torch.randn(2 * 6, 49, 64)
    with torch.no_grad():
        for m in (None, mask):
            expected = theirs(x, m)
            torch.testing.assert_close(ours(x, m), expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
        # The mask matters: without it the shifted windows attend across bands.
        assert not torch.allclose(ours(x, mask), ours(x, None), atol=1e-3)


@pytest.mark.parametrize(("height", "width"), [(200, 304), (25, 38), (7, 7), (3, 5), (14, 15)])
def test_shift_mask_equals_the_published_mask(height, width):
    ours = shift_mask(height, width, 7, 3)
    theirs = published_swin.shift_mask(height, width, 7, 3)
    assert ours.dtype == torch.float32 and torch.equal(ours, theirs)
    assert set(ours.unique().tolist()) <= {-100.0, 0.0}
    if (height, width) == (200, 304):
        assert ours.shape == (1276, 49, 49) and (ours == -100).any()


@pytest.mark.parametrize(("height", "width", "shift"), [(10, 9, 3), (14, 14, 3), (5, 16, 0), (13, 8, 6)])
def test_window_order_equals_pad_roll_partition_and_back(height, width, shift):
    window = 7
    x = torch.randn(2, height, width, 3)
    padded = torch.nn.functional.pad(
        x, (0, 0, 0, window_padding(width, window), 0, window_padding(height, window))
    )
    hp, wp = padded.shape[1:3]
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2)) if shift else padded
    expected = published_swin.partition(rolled, window).view(-1, window * window, 3)
    order, back = window_order(height, width, window, shift)
    windows = padded.reshape(2, hp * wp, 3).index_select(1, order).view(-1, window * window, 3)
    assert torch.equal(windows, expected)
    restored = windows.view(2, -1, 3).index_select(1, back)
    assert torch.equal(restored, x.reshape(2, height * width, 3))


def test_relative_position_index_is_the_published_formula():
    attention = WindowAttention(32, 7, 1)
    index = attention.relative_position_index
    assert index.dtype == torch.int64 and int(index[0, 0]) == 84 and int(index.max()) == 168
    assert torch.equal(index, reference_relative_position_index(7))
    assert torch.equal(index, published_swin.WindowAttention(32, 7, 1).relative_position_index)
    assert torch.equal(
        WindowAttention(32, 12, 1).relative_position_index, reference_relative_position_index(12)
    )


def test_patch_merging_concatenates_in_the_published_order():
    merge = PatchMerging(1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0), merge.norm.bias.zero_()
    x = torch.tensor([[0.0, 2.0], [1.0, 3.0]]).view(
        1, 4, 1
    )  # (row, col) value: (0,0)=0 (1,0)=1 (0,1)=2 (1,1)=3
    captured = []
    hook = merge.norm.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    merge(x, 2, 2)
    hook.remove()
    assert captured[0].flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    # Odd sizes get a zero row and column first: 3x3 -> 2x2 tokens.
    assert merge(torch.randn(2, 9, 1), 3, 3).shape == (2, 4, 2)


def test_drop_path_is_per_sample_and_training_only():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 5)
    out = drop(x)
    per_sample = out.flatten(1)
    assert all(set(row.tolist()) in ({0.0}, {2.0}) for row in per_sample)
    assert 10 < int((per_sample[:, 0] == 0).sum()) < 54
    assert torch.equal(drop.eval()(x), x)


def test_stochastic_depth_rates_per_size():
    model = build_swin("SwinB")
    rates = [
        b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for s in model.layers for b in s.blocks
    ]
    expected = torch.linspace(0, 0.3, 24).tolist()
    assert rates == pytest.approx(expected) and isinstance(model.layers[0].blocks[0].drop_path, nn.Identity)
    tiny = build_swin("SwinT")
    assert max(
        b.drop_path.p for s in tiny.layers for b in s.blocks if isinstance(b.drop_path, DropPath)
    ) == pytest.approx(0.2)
    assert SWINS["SwinB"] == SWINS["SwinB-22k"] and SWINS["SwinB-22k-384"].window == 12


def test_swin_b_fpn_has_the_published_names_and_shapes():
    backbone = build_backbone("SwinB-22k")
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert list(ours.items()) == list(reference_backbone_shapes("swinb").items())
    trunk = sum(p.numel() for p in backbone.bottom_up.parameters())
    fpn = sum(p.numel() for p in backbone.parameters()) - trunk
    assert len(ours) == 373 and (round(trunk / 1e6, 2), round(fpn / 1e6, 2)) == (86.75, 2.85)  # §9
    assert all(p.requires_grad for p in backbone.parameters())  # frozen_stages=-1, FREEZE_AT ignored
    shapes = backbone.output_shape()
    assert [(s.channels, s.stride) for s in shapes.values()] == [(256, 4), (256, 8), (256, 16), (256, 32)]
    assert backbone.size_divisibility == 32


def test_initialisation_is_the_published_one():
    model = build_swin("SwinNano")
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            assert bool((module.weight == 1).all() and (module.bias == 0).all()), name
        elif isinstance(module, nn.Linear):
            assert module.bias is None or bool((module.bias == 0).all()), name
    weights = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    assert float(weights.std()) == pytest.approx(0.02, rel=0.05)
    table = model.layers[0].blocks[0].attn.relative_position_bias_table.detach()
    assert float(table.std()) == pytest.approx(0.02, rel=0.3)


def test_bfloat16_forward_is_close_to_float32():
    torch.manual_seed(0)
    model = SwinTransformer(**SMALL).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = model(x)
        got = model.to(torch.bfloat16)(x.bfloat16())
    for name, value in expected.items():
        assert got[name].dtype == torch.bfloat16
        torch.testing.assert_close(got[name].float(), value, atol=0.15, rtol=0.05, msg=name)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = SwinTransformer(**SMALL, drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 64, 96))
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="name must be one of"):
        build_swin("SwinX")
    with pytest.raises(ValueError, match="name must be one of"):
        build_backbone("SwinX")
    with pytest.raises(ValueError, match="out_indices"):
        SwinTransformer(32, (2, 2), (1, 2), out_indices=(2,))
    with pytest.raises(ValueError, match="num_heads"):
        SwinTransformer(32, (2, 2), (1, 2, 4))
    with pytest.raises(ValueError, match="divisible"):
        WindowAttention(30, 7, 4)
