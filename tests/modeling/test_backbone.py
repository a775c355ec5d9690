"""ResNet trunk in detectron2's layout: shapes, strides, freezing, FrozenBN semantics and folding."""

import math

import pytest
import torch
from torch import nn

from diffdet.modeling.backbone import (
    RESNETS,
    BottleneckBlock,
    Conv2d,
    FrozenBatchNorm2d,
    build_backbone,
    build_resnet,
    fold_frozen_batchnorm,
    get_norm,
    has_folded_batchnorm,
    set_inference_folding,
)
from diffdet.modeling.shape_spec import ShapeSpec


def _randomize_frozen_bn(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


@pytest.mark.parametrize(
    ("name", "channels"),
    [("R18", (64, 128, 256, 512)), ("R18-half", (32, 64, 128, 256)), ("R50", (256, 512, 1024, 2048))],
)
def test_resnet_stage_outputs_match_output_shape(name, channels):
    resnet = build_resnet(name).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = resnet(x)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for (feature, spec), c in zip(resnet.output_shape().items(), channels, strict=True):
        assert spec == ShapeSpec(channels=c, stride=4 * 2 ** int(feature[-1]) // 4)
        assert out[feature].shape == (2, c, 64 // spec.stride, 96 // spec.stride), feature


def test_resnet_depths_and_counts():
    # Block counts per stage, and the trunk's state_dict size: 53 convs x 5 keys = 265 for R50.
    r50, r101 = build_resnet("R50"), build_resnet("R101")
    assert [len(getattr(r50, f"res{k}")) for k in range(2, 6)] == [3, 4, 6, 3]
    assert [len(getattr(r101, f"res{k}")) for k in range(2, 6)] == [3, 4, 23, 3]
    assert len(r50.state_dict()) == 265
    assert len(r101.state_dict()) == 265 + 17 * 3 * 5
    assert not any("num_batches_tracked" in k for k in r50.state_dict())
    assert set(RESNETS) == {"R18", "R18-half", "R50", "R101"}
    assert build_resnet("R18-half").stem.out_channels == 32


def test_bottleneck_stride_placement():
    r50 = build_resnet("R50")
    torchvision_style = r50.res3[0]
    assert torchvision_style.conv1.stride == (1, 1) and torchvision_style.conv2.stride == (2, 2)
    assert isinstance(r50.res4[0], BottleneckBlock) and r50.res4[0].shortcut.stride == (2, 2)
    assert r50.res2[1].shortcut is None
    msra_style = build_resnet("R50", stride_in_1x1=True).res3[0]
    assert msra_style.conv1.stride == (2, 2) and msra_style.conv2.stride == (1, 1)


def test_freeze_at_two_freezes_stem_and_res2():
    resnet = build_resnet("R50", norm="BN", freeze_at=2)
    for name, p in resnet.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "res2."))), name
    # Frozen stages' BatchNorms become FrozenBN (detectron2); trainable stages keep BatchNorm2d.
    assert isinstance(resnet.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(resnet.res2[0].conv3.norm, FrozenBatchNorm2d)
    assert isinstance(resnet.res3[0].conv3.norm, nn.BatchNorm2d)
    trainable = build_resnet("R18", norm="GN", freeze_at=0)
    assert all(p.requires_grad for p in trainable.parameters())


def test_frozen_bn_parameters_are_buffers_only():
    resnet = build_resnet("R50")
    # Only conv weights train: FrozenBN has no parameters.
    assert all(name.endswith("weight") and p.dim() == 4 for name, p in resnet.named_parameters())
    assert isinstance(resnet.res5[2].conv2.norm, FrozenBatchNorm2d)
    assert resnet.res5[2].conv2.norm.eps == 1e-5


@pytest.mark.parametrize("requires_grad", [False, True])
def test_frozen_bn_equals_batchnorm_in_eval(requires_grad):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8, eps=1e-5).eval()
    bn.running_mean.copy_(torch.randn(8))
    bn.running_var.copy_(torch.rand(8) + 0.1)
    bn.weight.data.copy_(torch.randn(8))
    bn.bias.data.copy_(torch.randn(8))
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert sorted(frozen.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    x = torch.randn(2, 8, 5, 6, requires_grad=requires_grad)
    torch.testing.assert_close(frozen(x), bn(x))
    # Hand-computed: (x - mean) / sqrt(var + eps) * w + b.
    expected = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5)
    torch.testing.assert_close(frozen(x), expected * bn.weight[:, None, None] + bn.bias[:, None, None])
    if requires_grad:
        frozen(x).sum().backward()
        assert x.grad is not None


def test_fresh_frozen_bn_is_identity():
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(FrozenBatchNorm2d(4)(x), x)


@pytest.mark.parametrize("norm", ["GN", "BN"])
def test_inference_folding_leaves_trainable_norms_alone(norm):
    """Backbones with trainable norms (train from scratch) warm and run the inference path: their
    trunk convs are not folded (the norm runs after them), the FPN's plain convs still use it."""
    torch.manual_seed(0)
    backbone = set_inference_folding(build_backbone("R18", norm=norm).eval(), True)
    trunk = backbone.bottom_up.res5[0].conv1  # trainable (FREEZE_AT 2 freezes the stem and res2 only)
    assert not isinstance(trunk.norm, FrozenBatchNorm2d) and trunk._folded is None
    with pytest.raises(ValueError, match="norm must be FrozenBatchNorm2d"):
        trunk.inference_weight_and_bias()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got = backbone(x)
    expected = backbone(x)  # autograd on: the plain ops
    for name, want in expected.items():
        want = want.detach()  # the frozen stem and res2 fold: float32 rounding only
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), msg=name)


def test_fold_frozen_batchnorm_matches_unfolded_r50():
    model = build_backbone("R50").eval()
    _randomize_frozen_bn(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert fold_frozen_batchnorm(model) == 53
        got = model(x)
    assert has_folded_batchnorm(model)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert fold_frozen_batchnorm(model) == 0
    for key in expected:
        scale = expected[key].abs().max().item()
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5 * scale, msg=key)


def test_fold_keeps_existing_bias_and_grad_flags():
    conv = Conv2d(3, 4, 3, padding=1, bias=True, norm=FrozenBatchNorm2d(4))
    _randomize_frozen_bn(conv, seed=1)
    nn.init.normal_(conv.bias)
    conv.weight.requires_grad_(False)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = conv(x)
        fold_frozen_batchnorm(conv)
        torch.testing.assert_close(conv(x), expected)
    assert conv.norm is None and not conv.bias.requires_grad
    assert not has_folded_batchnorm(build_resnet("R18"))


def test_c2_msra_fill_statistics():
    conv = build_resnet("R50").res4[0].conv2  # 256 -> 256, 3x3
    fan_out = 256 * 3 * 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
    assert conv.bias is None


def test_resnet_rejects_bad_input():
    resnet = build_resnet("R18")
    with pytest.raises(ValueError, match="x must be"):
        resnet(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="x must be"):
        resnet(torch.randn(1, 1, 32, 32))


def test_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        build_resnet("R34")
    with pytest.raises(ValueError, match="norm"):
        build_resnet("R18", norm="LN")
    with pytest.raises(ValueError, match="norm"):
        build_resnet("R18", norm="")  # the trunk's convs have no bias
    with pytest.raises(ValueError, match="freeze_at"):
        build_resnet("R18", freeze_at=6)
    with pytest.raises(ValueError, match="fpn_norm"):
        build_backbone("R18", fpn_norm="SyncBN")
    with pytest.raises(ValueError, match="GN"):
        get_norm("GN", 48)


def test_convolution_falls_back_to_the_unfused_ops_when_onednn_refuses(monkeypatch):
    """torch 2.11's oneDNN refuses some shapes for the fused conv + add + ReLU (a 1x1 map); the
    convolution then runs the unfused ops and gives their result instead of failing."""
    from diffdet.modeling.backbone import conv as conv_module

    torch.manual_seed(0)
    layer = conv_module.Conv2d(8, 8, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(8)).eval()
    x, residual = torch.randn(1, 8, 1, 1), torch.randn(1, 8, 1, 1)
    with torch.no_grad():
        expected = layer(x, residual=residual.clone(), relu=True)

        def refuse(*args, **kwargs):
            raise RuntimeError("could not create a memory")

        monkeypatch.setattr(conv_module, "_onednn_conv", refuse)
        got = layer(x, residual=residual.clone(), relu=True)
    torch.testing.assert_close(got, expected)
