"""The one switch to the published computation: ``DIFFDET_BACKEND=published`` or ``diffdet.set_backend``.

With only the switch set (no ``fuse_for_inference`` call), diffdet must compute what the published code
computes bit for bit: the Swin window attention (against the published ``WindowAttention.forward``,
transcribed below as the published code writes it), the Swin trunk, and a R50-FPN detector's backbone
(against a detectron2 ResNet/FPN forward written below) and every head stage of every step (against
``published_head``), with the published sampler's ensemble as the default.
"""

from __future__ import annotations

import published_swin
import pytest
import torch
import torch.nn.functional as F
from detector_kit import random_images, tame_detector, with_frozen_bn_statistics
from published_head import DynamicHead as PublishedHead
from torch import nn

import diffdet
from diffdet.modeling import ModelConfig
from diffdet.modeling.backbone.swin import SwinTransformer, WindowAttention
from diffdet.modeling.backbone.swin_windows import shift_mask
from diffdet.ops._backend import forced_backend, published_mode, set_backend

pytestmark = pytest.mark.usefixtures("one_thread")

R50_TINY = dict(
    backbone="R50", num_classes=5, num_proposals=20, hidden_dim=32, dim_feedforward=64, nheads=2,
    dim_dynamic=8, min_size_test=64, max_size_test=96,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _no_switch(monkeypatch):
    """Each test starts with neither switch set and leaves none behind."""
    monkeypatch.delenv("DIFFDET_BACKEND", raising=False)
    with set_backend(None):
        yield


class PublishedWindowAttention(nn.Module):
    """``WindowAttention`` of the published ``swintransformer.py`` (eval mode: the dropouts are p = 0),
    its forward as written there."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None):
        super().__init__()
        self.dim = dim
        self.window_size = window_size  # Wh, Ww
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads)
        )
        coords_h = torch.arange(self.window_size[0])
        coords_w = torch.arange(self.window_size[1])
        coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
        relative_coords = relative_coords.permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += self.window_size[0] - 1
        relative_coords[:, :, 1] += self.window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
        relative_position_index = relative_coords.sum(-1)
        self.register_buffer("relative_position_index", relative_position_index)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, mask=None):
        B_, N, C = x.shape  # as published
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]

        q = q * self.scale
        attn = q @ k.transpose(-2, -1)

        relative_position_bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)
        ].view(self.window_size[0] * self.window_size[1], self.window_size[0] * self.window_size[1], -1)
        relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()
        attn = attn + relative_position_bias.unsqueeze(0)

        if mask is not None:
            nW = mask.shape[0]  # as published
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
            attn = self.softmax(attn)
        else:
            attn = self.softmax(attn)

        attn = self.attn_drop(attn)

        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (bias tables well above 0.02, LayerNorms off 1/0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if "bias_table" in name else 0.05))
    return model


@pytest.mark.parametrize("switch", ["env", "call"])
@torch.no_grad()
def test_window_attention_is_bitwise_the_published_code(switch, monkeypatch):
    torch.manual_seed(0)
    ours = _perturb(WindowAttention(64, 7, 2))
    theirs = PublishedWindowAttention(64, (7, 7), 2)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    mask = shift_mask(14, 21, 7, 3)  # 6 windows, of which 4 masked
    x = torch.randn(2 * 6, 49, 64, generator=torch.Generator().manual_seed(1))
    if switch == "env":
        monkeypatch.setenv("DIFFDET_BACKEND", "published")
    else:
        set_backend("published")
    for m in (None, mask):
        assert torch.equal(ours(x, m), theirs(x, m)), f"mask={m is not None}"


@torch.no_grad()
def test_swin_trunk_is_bitwise_the_published_trunk():
    kwargs = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    torch.manual_seed(0)
    ours = _perturb(SwinTransformer(**kwargs)).eval()
    theirs = published_swin.SwinTransformer(**kwargs).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    # 24x40 .. 3x5 tokens: every stage pads to the window; stages 0-2 have masked shifted windows.
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(2))
    with diffdet.set_backend("published"):
        got = ours(x)
    want = theirs(x)
    assert list(got) == list(want)
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def _conv_norm(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """detectron2 ``Conv2d``: the convolution, then its norm (FrozenBN is ``F.batch_norm`` without grad)."""
    x = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    norm = conv.norm
    if norm is not None:
        x = F.batch_norm(
            x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps
        )
    return x


def published_resnet_fpn(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """detectron2's ResNet (BottleneckBlock) and FPN forward, NCHW, with ``backbone``'s weights: p2..p5."""
    trunk = backbone.bottom_up
    x = F.relu_(_conv_norm(trunk.stem.conv1, x))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    bottom_up = {}
    for name in ("res2", "res3", "res4", "res5"):
        for block in getattr(trunk, name):
            out = F.relu_(_conv_norm(block.conv1, x))
            out = F.relu_(_conv_norm(block.conv2, out))
            out = _conv_norm(block.conv3, out)
            shortcut = _conv_norm(block.shortcut, x) if block.shortcut is not None else x
            out += shortcut
            x = F.relu_(out)
        bottom_up[name] = x
    prev = _conv_norm(backbone.fpn_lateral5, bottom_up["res5"])
    results = [_conv_norm(backbone.fpn_output5, prev)]
    for level in (4, 3, 2):
        top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
        prev = _conv_norm(getattr(backbone, f"fpn_lateral{level}"), bottom_up[f"res{level}"]) + top_down
        results.insert(0, _conv_norm(getattr(backbone, f"fpn_output{level}"), prev))
    return results


@pytest.fixture(scope="module")
def r50(one_thread):
    """A tame random R50-FPN detector with FrozenBNs away from the identity (so folding them would show),
    its inference fusions on (the default)."""
    model = with_frozen_bn_statistics(tame_detector(ModelConfig(**R50_TINY)))
    assert model.inference_fusion
    return model


@torch.no_grad()
def test_r50_detector_is_bitwise_the_published_code_at_every_head_stage(r50, monkeypatch):
    monkeypatch.setenv("DIFFDET_BACKEND", "published")
    images = random_images(1)
    batch = r50.preprocess(images, resize=True)
    features = r50.features(batch.tensor)
    expected = published_resnet_fpn(r50.backbone, batch.tensor)
    for level, (got, want) in enumerate(zip(features, expected, strict=True)):
        assert got.is_contiguous() and torch.equal(got, want), f"p{level + 2}"

    calls = []
    sample_reference = r50.sampler.sample_reference
    monkeypatch.setattr(
        r50.sampler, "sample_reference", lambda *a, **k: calls.append(1) or sample_reference(*a, **k)
    )
    _, steps = r50(images, steps=2, seed=3, return_intermediates=True)
    assert calls, "the published mode's default ensemble is the published sampler's"

    published = PublishedHead(5, 32, 64, 2, 6, num_cls=1, num_reg=3, dim_dynamic=8).eval()
    published.load_state_dict(r50.head.state_dict(), strict=True)
    assert [s["time"] for s in steps] == [999, 499]
    for step in steps:
        t = torch.full((1,), step["time"], dtype=torch.int64)
        logits, boxes = published(expected, step["boxes"], t)
        for k in range(6):
            assert torch.equal(step["pred_logits"][k], logits[k]), f"t={step['time']} stage {k} logits"
            assert torch.equal(step["pred_boxes"][k], boxes[k]), f"t={step['time']} stage {k} boxes"


@torch.no_grad()
def test_fast_default_keeps_its_fusions_and_ensemble(r50, monkeypatch):
    """Without the switch (and with ``set_backend("auto")`` over the env var) the fast path is taken."""
    monkeypatch.setenv("DIFFDET_BACKEND", "published")
    with set_backend("auto"):
        assert not published_mode() and forced_backend() is None
        batch = r50.preprocess(random_images(1), resize=True)
        maps = r50.features(batch.tensor)
        assert all(m.is_contiguous(memory_format=torch.channels_last) for m in maps)
        called = []
        monkeypatch.setattr(r50.sampler, "sample_reference", lambda *a, **k: called.append(1))
        r50(random_images(1), steps=2, seed=0)
        assert not called


def test_cuda_graph_sampler_refuses_the_published_mode(r50):
    from diffdet.modeling import CudaGraphSampler

    with set_backend("published"), pytest.raises(ValueError, match="published mode"):
        CudaGraphSampler(r50, batch_size=1, padded_size=(64, 96))


def test_set_backend_is_a_call_and_a_context_manager_that_restores(monkeypatch):
    assert diffdet.set_backend is set_backend
    monkeypatch.setenv("DIFFDET_BACKEND", "reference")
    assert forced_backend() == "reference"
    with diffdet.set_backend("published") as setting:
        assert published_mode() and "published" in repr(setting)
        with diffdet.set_backend("compiled"):
            assert forced_backend() == "compiled" and not published_mode()
        assert published_mode()
    assert forced_backend() == "reference"  # the env var decides again
    diffdet.set_backend("Published")
    assert published_mode()
    diffdet.set_backend(None)
    assert forced_backend() == "reference"


@pytest.mark.parametrize("name", ["fast", "", 3])
def test_set_backend_rejects_an_unknown_name_naming_it(name):
    with pytest.raises(ValueError, match=repr(name)):
        set_backend(name)
    assert forced_backend() is None  # nothing changed


def test_bench_grid_runs_its_published_baseline_under_the_switch(r50, monkeypatch):
    """``diffdet bench``'s ``published`` baseline runs under ``set_backend("published")``; its
    ``reference`` baseline and the fast modes do not, even with ``DIFFDET_BACKEND=published`` set."""
    from diffdet.bench import grid
    from diffdet.bench.settings import GridSettings

    monkeypatch.setenv("DIFFDET_BACKEND", "published")
    seen = []

    def staged_detect(model, images, **kwargs):
        seen.append((forced_backend(), published_mode()))
        return [], {"total": 1.0}

    monkeypatch.setattr(grid, "staged_detect", staged_detect)
    settings = GridSettings(
        boxes=[4], steps=[1], size=(32, 48), warmup=0, iters=1, baselines=("reference", "published")
    )
    grid.run_grid(r50, settings)
    assert seen == [("reference", False), ("published", True), (None, False)]
    assert published_mode()  # the env var is back in charge
