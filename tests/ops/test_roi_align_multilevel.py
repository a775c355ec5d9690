"""roi_align_multilevel: the reference against hand-computed values and torchvision, every backend
against the reference, gradients, registration (opcheck, torch.compile) and input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffdet import _extension
from diffdet.ops.roi_align_multilevel import (
    MAX_ADAPTIVE_GRID,
    assign_levels_reference,
    roi_align_multilevel,
    roi_align_multilevel_published,
    roi_align_multilevel_reference,
)

torchvision = pytest.importorskip("torchvision", reason="torchvision is the outside baseline")

HAS_CUDA = torch.cuda.is_available()
needs_cpu_kernel = pytest.mark.skipif(
    not _extension.has_kernel("roi_align_multilevel", "cpu"), reason="diffdet._C has no CPU kernel"
)
needs_cuda_kernel = pytest.mark.skipif(
    not (HAS_CUDA and _extension.has_kernel("roi_align_multilevel", "cuda")),
    reason="needs CUDA and its kernel",
)
# (dtype, atol, rtol) of the compiled kernel against the reference run on the same inputs; the
# reference accumulates in float32 as the kernel does, so low precision differs by output rounding.
DTYPES = [
    (torch.float32, 1e-5, 1e-5),
    (torch.float64, 1e-12, 1e-12),
    (torch.bfloat16, 1e-2, 1e-2),
    (torch.float16, 1e-3, 1e-3),
]


def make_features(batch=2, channels=5, height=64, width=80, levels=4, dtype=torch.float32, seed=0):
    """Maps [B, C, ceil(H / 2**i), ceil(W / 2**i)] for levels i = 0..L-1 (strides 4, 8, ...)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, channels, -(-height // 2**i), -(-width // 2**i), generator=gen).to(dtype)
        for i in range(levels)
    ]


def make_boxes(num, batch=2, image=(256, 320), seed=0):
    """Boxes of every size (so every level), some crossing the border, some degenerate."""
    gen = torch.Generator().manual_seed(seed)
    h, w = image
    centre = torch.rand(num, 2, generator=gen) * torch.tensor([w + 40.0, h + 40.0]) - 20
    size = torch.exp(torch.rand(num, 2, generator=gen) * 7.5) * 0.5  # 0.5 .. 900 pixels
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    if num > 5:
        boxes[0] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # zero width
        boxes[1] = torch.tensor([50.0, 60.0, 40.0, 50.0])  # flipped: positive area, negative size
        boxes[2] = torch.tensor([-500.0, -500.0, -300.0, -200.0])  # far outside
        boxes[3] = torch.tensor([20.0, 20.0, 10.0, 50.0])  # negative area: no level, pools to 0
        boxes[4] = torch.tensor([-30.0, -20.0, 600.0, 500.0])  # P5, crossing the border
    return boxes, torch.randint(0, batch, (num,), generator=gen)


# ---------------------------------------------------------------- the reference, on its own


def test_level_assignment_hand_computed():
    sides = torch.tensor([224.0, 112.0, 56.0, 448.0, 2000.0, 4.0, 223.0, 0.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], 1)
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, -10.0, 5.0]])])  # negative area: undefined
    levels = assign_levels_reference(boxes, 4, 224.0, 4, 2)
    assert levels.tolist() == [2, 1, 0, 3, 3, 0, 1, 0, -1]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
def test_reference_pools_a_linear_map_to_bin_centres(aligned, sampling_ratio):
    """Bilinear sampling is exact on f(y, x) = 2y + 3x + 1, and the samples of a bin are symmetric
    about its centre, so each bin is f at the bin centre (in feature pixels)."""
    height, width = 40, 50
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    fmap = (2 * y + 3 * x + 1)[None, None]  # [1, 1, H, W] at stride 4 (level 2)
    box = torch.tensor([[30.0, 20.0, 90.0, 110.0]], dtype=torch.float64)  # inside; level 2 (sqrt(area) < 112)
    out = roi_align_multilevel_reference(
        [fmap],
        box,
        torch.zeros(1, dtype=torch.int64),
        output_size=3,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (box[0] / 4 - offset).tolist()
    centre_y = y1 + (torch.arange(3, dtype=torch.float64) + 0.5) * (y2 - y1) / 3
    centre_x = x1 + (torch.arange(3, dtype=torch.float64) + 0.5) * (x2 - x1) / 3
    expected = 2 * centre_y[:, None] + 3 * centre_x[None, :] + 1
    torch.testing.assert_close(out[0, 0], expected, msg="pooled linear map")


def test_reference_zero_outside_and_constant_inside():
    fmap = torch.full((1, 3, 20, 20), 7.0)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [-400.0, -400.0, -200.0, -200.0]])
    out = roi_align_multilevel_reference([fmap], boxes, torch.zeros(2, dtype=torch.int64))
    torch.testing.assert_close(out[0], torch.full((3, 7, 7), 7.0), msg="inside")
    torch.testing.assert_close(out[1], torch.zeros(3, 7, 7), msg="outside")


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("bin_major", [False, True])
def test_reference_matches_the_published_torchvision_loop(aligned, sampling_ratio, bin_major):
    """The reference against detectron2's ROIPooler loop over torchvision's roi_align."""
    feats = make_features(dtype=torch.float64)
    boxes, batch_idx = make_boxes(60)
    boxes = boxes.double()
    kw = dict(sampling_ratio=sampling_ratio, aligned=aligned, bin_major=bin_major)
    out = roi_align_multilevel_reference(feats, boxes, batch_idx, **kw)
    expected = roi_align_multilevel_published(feats, boxes, batch_idx, **kw)
    levels = assign_levels_reference(boxes, 4, 224.0, 4, 2)
    assert set(levels.tolist()) >= {-1, 0, 1, 2, 3}, "the boxes must cover every level"
    torch.testing.assert_close(out, expected, msg="reference vs torchvision roi_align")


def test_published_backend_runs_the_torchvision_loop(monkeypatch):
    feats = make_features()
    boxes, batch_idx = make_boxes(40)
    monkeypatch.setenv("DIFFDET_BACKEND", "published")
    out = roi_align_multilevel(feats, boxes, batch_idx, bin_major=True)
    assert torch.equal(out, roi_align_multilevel_published(feats, boxes, batch_idx, bin_major=True))


# ---------------------------------------------------------------- compiled kernels vs the reference


def _both(feats, boxes, batch_idx, **kw):
    out = roi_align_multilevel(feats, boxes, batch_idx, **kw)
    ref = roi_align_multilevel_reference(feats, boxes, batch_idx, **kw)
    return out, ref


@needs_cpu_kernel
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bin_major", [False, True])
@pytest.mark.parametrize("num", [0, 1, 37, 400])
def test_roi_align_multilevel_matches_reference(dtype, atol, rtol, channels_last, bin_major, num):
    feats = make_features(channels=7, dtype=dtype)
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    boxes, batch_idx = make_boxes(num)
    out, ref = _both(feats, boxes, batch_idx, bin_major=bin_major)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol, msg=f"output {dtype}")


@needs_cpu_kernel
@pytest.mark.parametrize("bin_major", [False, True])
def test_roi_align_multilevel_bf16_pyramid_matches_the_fp32_reference(bin_major):
    """A bf16 detector's pyramid (channels-last bf16 maps) pooled by the CPU kernel straight from bf16,
    with no float32 copy of any map, against the float32 reference on the unrounded float32 maps and
    boxes: its error is at most 2x that of the reference run on the bf16-rounded inputs and rounded to
    bf16 (the error bf16 storage costs anyway), plus 1e-3."""
    feats = make_features(channels=24)
    boxes, batch_idx = make_boxes(200)
    maps = [f.to(torch.bfloat16).contiguous(memory_format=torch.channels_last) for f in feats]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        out = roi_align_multilevel(maps, boxes, batch_idx, bin_major=bin_major)
    copies = [
        (e.key, e.input_shapes)
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous")
        and any(len(shape) == 4 for shape in e.input_shapes)
    ]
    assert not copies, f"a map was copied: {copies}"
    assert out.dtype == torch.bfloat16
    expected = roi_align_multilevel_reference(feats, boxes, batch_idx, bin_major=bin_major)
    rounded = roi_align_multilevel_reference(
        [m.float() for m in maps], boxes.to(torch.bfloat16).float(), batch_idx, bin_major=bin_major
    ).to(torch.bfloat16)
    budget = 2 * float((rounded.float() - expected).abs().max()) + 1e-3
    err = float((out.float() - expected).abs().max())
    assert err <= budget, f"bf16 kernel error {err:.4g} > {budget:.4g} (2x bf16 rounding of the inputs)"


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num", [10, 400])
@pytest.mark.parametrize("channels", [20, 72])
def test_roi_align_multilevel_forward_is_the_same_in_every_layout(dtype, num, channels):
    """NCHW maps (pooled from channels-last scratch blocks of 16 channels), channels-last maps (blocks
    of 64, 8 and 1 channels), a strided view (the element-wise scratch copy) and levels of both
    layouts in one call give the same bits; 20 and 72 channels make partial blocks of every width."""
    feats = make_features(channels=channels, dtype=dtype)
    boxes, batch_idx = make_boxes(num)
    nchw = roi_align_multilevel(feats, boxes, batch_idx)
    last = roi_align_multilevel(
        [f.contiguous(memory_format=torch.channels_last) for f in feats], boxes, batch_idx
    )
    wide = [torch.zeros(*f.shape[:3], 2 * f.shape[3], dtype=dtype) for f in feats]
    for w, f in zip(wide, feats, strict=True):
        w[..., ::2] = f
    strided = roi_align_multilevel([w[..., ::2] for w in wide], boxes, batch_idx)
    mixed = roi_align_multilevel(
        [f.contiguous(memory_format=torch.channels_last) if i % 2 else f for i, f in enumerate(feats)],
        boxes,
        batch_idx,
    )
    assert torch.equal(nchw, last) and torch.equal(nchw, strided) and torch.equal(nchw, mixed)


@needs_cpu_kernel
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 3])
def test_roi_align_multilevel_options_match_reference(aligned, sampling_ratio):
    feats = make_features(levels=3)
    boxes, batch_idx = make_boxes(50)
    kw = dict(
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        canonical_box_size=100.0,
        canonical_level=3,
        min_level=3,
    )
    out, ref = _both(
        [f[:, :, ::2, ::2] for f in feats], boxes, batch_idx, output_size=5, **kw
    )  # strided views
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg="output")


@needs_cpu_kernel
@settings(max_examples=25, deadline=None)
@given(
    num=st.integers(0, 12),
    levels=st.integers(1, 4),
    size=st.integers(1, 5),
    sampling_ratio=st.integers(0, 3),
    aligned=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1.0, 2000.0),
)
def test_roi_align_multilevel_random_matches_reference(
    num, levels, size, sampling_ratio, aligned, seed, scale
):
    gen = torch.Generator().manual_seed(seed)
    feats = make_features(
        batch=2, channels=3, height=23, width=17, levels=levels, dtype=torch.float64, seed=seed
    )
    boxes = (
        torch.rand(num, 4, generator=gen, dtype=torch.float64) - 0.25
    ) * scale  # any order: degenerate too
    batch_idx = torch.randint(0, 2, (num,), generator=gen)
    out, ref = _both(
        feats, boxes, batch_idx, output_size=size, sampling_ratio=sampling_ratio, aligned=aligned
    )
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10, msg="output")


@needs_cpu_kernel
def test_roi_align_multilevel_huge_boxes_are_bounded():
    """Adaptive sampling of a huge box is capped at MAX_ADAPTIVE_GRID per bin side, in both."""
    feats = make_features(levels=1, height=16, width=16)
    boxes = torch.tensor([[-1e6, -1e6, 1e6, 1e6], [0.0, 0.0, 4.0 * 7 * (MAX_ADAPTIVE_GRID + 3), 30.0]])
    out, ref = _both(feats, boxes, torch.zeros(2, dtype=torch.int64), sampling_ratio=0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg="output")


@needs_cpu_kernel
def test_kernel_is_safe_on_non_finite_boxes():
    """Called directly (no Python checks), NaN/inf boxes and bad batch indices pool to zeros."""
    feats = make_features(levels=2)
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor(
        [[nan, 0, 10, 10], [0, 0, inf, inf], [-inf, -inf, 5, 5], [0, 0, 50, 50], [0, 0, 50, 50]]
    )
    batch_idx = torch.tensor([0, 1, 0, -3, 99])
    out = torch.ops.diffdet.roi_align_multilevel(feats, boxes, batch_idx, 7, 0, True, 224.0, 4, 2, False)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[[0, 3, 4]], torch.zeros(3, 5, 7, 7), msg="undefined boxes")


# ---------------------------------------------------------------- gradients and registration


@needs_cpu_kernel
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bin_major", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_roi_align_multilevel_gradcheck(seed, bin_major, layout):
    feats = [
        f.clone(memory_format=layout).requires_grad_()
        for f in make_features(1, 2, 12, 10, levels=3, dtype=torch.float64, seed=seed)
    ]
    boxes, batch_idx = make_boxes(6, batch=1, image=(12, 10), seed=seed)

    def fn(*maps):
        return roi_align_multilevel(
            list(maps), boxes.double(), batch_idx, output_size=2, canonical_box_size=6.0, bin_major=bin_major
        )

    assert torch.autograd.gradcheck(fn, feats, fast_mode=True)


@needs_cpu_kernel
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("bin_major", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_roi_align_multilevel_backward_matches_reference(dtype, tol, bin_major, layout):
    """The kernel's gradient (float32 accumulation, rounded once) against the float32 reference's,
    in the maps' layout; 20 channels: channels-last chunks of 16 and a partial one."""
    feats = make_features(channels=20)
    boxes, batch_idx = make_boxes(120)
    grad = torch.randn(120, 49, 20) if bin_major else torch.randn(120, 20, 7, 7)
    maps = [f.to(dtype).clone(memory_format=layout).requires_grad_() for f in feats]
    roi_align_multilevel(maps, boxes, batch_idx, bin_major=bin_major).backward(grad.to(dtype))
    ref_maps = [f.to(dtype).float().requires_grad_() for f in feats]
    ref_boxes = boxes.to(dtype).float()  # the op samples at box coordinates rounded to the maps' dtype
    assert torch.equal(
        assign_levels_reference(ref_boxes, 4, 224.0, 4, 2), assign_levels_reference(boxes, 4, 224.0, 4, 2)
    )
    ref = roi_align_multilevel_reference(ref_maps, ref_boxes, batch_idx, bin_major=bin_major)
    ref.backward(grad.to(dtype).float())
    for level, (got, want) in enumerate(zip(maps, ref_maps, strict=True)):
        assert got.grad.dtype == dtype
        assert got.grad.is_contiguous(memory_format=layout)
        torch.testing.assert_close(
            got.grad.float(), want.grad, atol=tol, rtol=tol, msg=f"grad[features[{level}]]"
        )


@needs_cpu_kernel
def test_roi_align_multilevel_backward_is_deterministic_in_both_layouts():
    """Each gradient element sums its terms in box order whatever the layout: equal bit for bit."""
    feats = make_features(channels=64)
    boxes, batch_idx = make_boxes(300)
    runs = []
    for layout in (torch.contiguous_format, torch.contiguous_format, torch.channels_last):
        maps = [f.clone(memory_format=layout).requires_grad_() for f in feats]
        roi_align_multilevel(maps, boxes, batch_idx).sum().backward()
        runs.append([m.grad for m in maps])
    for first, *others in zip(*runs, strict=True):
        for other in others:
            assert torch.equal(first, other)


@needs_cpu_kernel
def test_roi_align_multilevel_double_backward_raises():
    feats = [f.double().requires_grad_() for f in make_features(1, 2, 8, 8, levels=2)]
    boxes, batch_idx = make_boxes(3, batch=1, image=(8, 8))
    out = roi_align_multilevel(feats, boxes, batch_idx, output_size=2)
    (grad,) = torch.autograd.grad(out.sum(), feats[0], create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@needs_cpu_kernel
def test_roi_align_multilevel_opcheck():
    feats = [f.requires_grad_() for f in make_features(1, 3, 16, 16, levels=2, dtype=torch.float64)]
    boxes, batch_idx = make_boxes(9, batch=1, image=(16, 16))
    for bin_major in (False, True):
        args = (feats, boxes, batch_idx, 3, 2, True, 224.0, 4, 2, bin_major)
        torch.library.opcheck(torch.ops.diffdet.roi_align_multilevel.default, args)


@needs_cpu_kernel
def test_roi_align_multilevel_torch_compile_fullgraph():
    feats = make_features(channels=4)
    boxes, batch_idx = make_boxes(30)
    fn = torch.compile(
        lambda f, b, i: roi_align_multilevel(f, b, i, bin_major=True), fullgraph=True, backend="eager"
    )
    torch.testing.assert_close(
        fn(feats, boxes, batch_idx), roi_align_multilevel(feats, boxes, batch_idx, bin_major=True)
    )


@needs_cpu_kernel
def test_roi_align_multilevel_torch_export():
    class Pool(torch.nn.Module):
        def forward(self, p2, p3, boxes, batch_idx):
            return roi_align_multilevel([p2, p3], boxes, batch_idx, output_size=5)

    feats = make_features(levels=2)
    boxes, batch_idx = make_boxes(20)
    program = torch.export.export(Pool(), (*feats, boxes, batch_idx))
    assert any("diffdet.roi_align_multilevel" in str(n.target) for n in program.graph.nodes)
    torch.testing.assert_close(
        program.module()(*feats, boxes, batch_idx),
        roi_align_multilevel(feats, boxes, batch_idx, output_size=5),
    )


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda f, b, i: (f[0], b, i), "features"),
        (lambda f, b, i: ([], b, i), "features"),
        (lambda f, b, i: ([f[0], f[1][:, :2]], b, i), r"features\[1\]"),
        (lambda f, b, i: ([f[0], f[1].double()], b, i), r"features\[1\]"),
        (lambda f, b, i: ([f[0].int()], b, i), r"features\[0\]"),
        (lambda f, b, i: (f, b[:, :3], i), "boxes"),
        (lambda f, b, i: (f, b.half(), i), "boxes"),
        (lambda f, b, i: (f, b, i[:-1]), "batch_idx"),
        (lambda f, b, i: (f, b, i.int()), "batch_idx"),
        (lambda f, b, i: (f, b, i + 5), "batch_idx"),
        (lambda f, b, i: (f, b.index_fill(0, torch.tensor([1]), float("nan")), i), "boxes"),
    ],
)
def test_roi_align_multilevel_rejects_bad_input(change, name):
    feats = make_features(levels=2)
    boxes, batch_idx = make_boxes(4)
    with pytest.raises(ValueError, match=name):
        roi_align_multilevel(*change(feats, boxes, batch_idx))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"output_size": 0}, "output_size"),
        ({"sampling_ratio": -1}, "sampling_ratio"),
        ({"canonical_box_size": 0.0}, "canonical_box_size"),
        ({"min_level": -1}, "min_level"),
    ],
)
def test_roi_align_multilevel_rejects_bad_options(kw, name):
    boxes, batch_idx = make_boxes(4)
    with pytest.raises(ValueError, match=name):
        roi_align_multilevel(make_features(levels=2), boxes, batch_idx, **kw)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda_kernel
@pytest.mark.parametrize(("dtype", "atol", "rtol"), [d for d in DTYPES if d[0] != torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bin_major", [False, True])
@pytest.mark.parametrize("channels", [67, 520])
def test_roi_align_multilevel_cuda_matches_reference(dtype, atol, rtol, channels_last, bin_major, channels):
    """67 channels: one partial block of threads; 520: two full 256-channel blocks and a partial one."""
    feats = [f.cuda() for f in make_features(channels=channels, dtype=dtype)]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    boxes, batch_idx = make_boxes(513)
    out, ref = _both(feats, boxes.cuda(), batch_idx.cuda(), bin_major=bin_major)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol, msg=f"cuda output {dtype}")


@pytest.mark.gpu
@needs_cuda_kernel
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 2e-2)], ids=str
)
@pytest.mark.parametrize("channels", [33, 300])
def test_roi_align_multilevel_cuda_backward_matches_cpu(sampling_ratio, dtype, tol, channels):
    """Both kernels accumulate in fp32 and round once: half and bf16 gradients agree to their rounding;
    300 channels span two thread blocks."""
    feats = [f.to(dtype) for f in make_features(channels=channels)]
    boxes, batch_idx = make_boxes(200)
    grads = []
    for device in ("cpu", "cuda"):
        maps = [f.to(device).requires_grad_() for f in feats]
        out = roi_align_multilevel(
            maps, boxes.to(device), batch_idx.to(device), sampling_ratio=sampling_ratio
        )
        out.backward(torch.ones_like(out))
        grads.append([m.grad.cpu() for m in maps])
    for level, (got, want) in enumerate(zip(grads[1], grads[0], strict=True)):
        assert got.dtype == dtype
        torch.testing.assert_close(
            got.float(), want.float(), atol=tol, rtol=tol, msg=f"grad[features[{level}]] ({dtype})"
        )


@pytest.mark.gpu
@needs_cuda_kernel
def test_roi_align_multilevel_cuda_is_safe_on_non_finite_boxes():
    feats = [f.cuda() for f in make_features(levels=2)]
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor([[nan, 0, 10, 10], [0, 0, inf, inf], [0, 0, 50, 50]], device="cuda")
    out = roi_align_multilevel(feats, boxes, torch.tensor([0, 1, 7], device="cuda"), sampling_ratio=0)
    assert torch.isfinite(out).all()
    assert not out[[0, 2]].any()


# ---------------------------------------------------------------- samples outside the map, empty maps
# A sample outside [-1, H] x [-1, W] adds nothing: it must not read pixel (0, 0) with weight 0 (0 * inf
# is NaN) nor scatter 0 * grad into it (0 * inf again), and an empty level (H or W = 0) has no pixel.

DEVICES = [
    pytest.param("cpu", marks=needs_cpu_kernel),
    pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda_kernel]),
]
# Boxes wholly outside an 8 x 8 level-0 map (stride 4: 32 x 32 pixels), on every side, then one inside
# that stays clear of pixel (0, 0) (so its output is finite too).
OUTSIDE_BOXES = [
    [-500.0, -500.0, -300.0, -300.0],
    [-90.0, 4.0, -40.0, 20.0],
    [4.0, -90.0, 20.0, -40.0],
    [60.0, 60.0, 100.0, 90.0],
    [200.0, -50.0, 260.0, 10.0],
    [12.0, 12.0, 28.0, 28.0],
]


def _poisoned_map(channels, dtype, device):
    """[1, C, 8, 8] with inf, -inf and NaN at pixel (0, 0) of the first channels."""
    fmap = torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(3)).to(dtype)
    fmap[0, 0::3, 0, 0] = float("inf")
    fmap[0, 1::3, 0, 0] = float("nan")
    fmap[0, 2::3, 0, 0] = -float("inf")
    return fmap.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels", [5, 300])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_samples_outside_the_map_skip_a_non_finite_pixel(device, dtype, channels, sampling_ratio):
    fmap = _poisoned_map(channels, dtype, device)
    boxes = torch.tensor(OUTSIDE_BOXES, device=device)
    batch_idx = torch.zeros(len(OUTSIDE_BOXES), dtype=torch.int64, device=device)
    out, ref = _both([fmap], boxes, batch_idx, sampling_ratio=sampling_ratio)
    assert torch.isfinite(out).all(), "an outside sample read the non-finite pixel (0, 0)"
    assert not out[:-1].any(), "boxes outside the map pool to 0"
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2, msg="output")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_backward_adds_nothing_for_samples_outside_the_map(device, dtype):
    """An inf/NaN gradient of boxes outside the map must not reach pixel (0, 0) (0 * inf = NaN)."""
    fmap = _poisoned_map(300, dtype, device).requires_grad_()
    boxes = torch.tensor(OUTSIDE_BOXES, device=device)
    batch_idx = torch.zeros(len(OUTSIDE_BOXES), dtype=torch.int64, device=device)
    out = roi_align_multilevel([fmap], boxes, batch_idx)
    grad = torch.ones_like(out)
    grad[:-1] = float("inf")
    grad[:-1, 1::2] = float("nan")
    out.backward(grad)
    assert fmap.grad[0, :, 0, 0].eq(0).all(), "pixel (0, 0) got a gradient from outside samples"
    ref_map = fmap.detach().float().requires_grad_()
    roi_align_multilevel_reference([ref_map], boxes, batch_idx).backward(grad.float())
    torch.testing.assert_close(fmap.grad.float(), ref_map.grad, atol=1e-2, rtol=1e-2, msg="grad[features[0]]")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bin_major", [False, True])
def test_empty_levels_pool_to_zero(device, dtype, bin_major):
    """Levels with H = 0 or W = 0 (the checks allow them): their boxes pool to 0, backward gives
    empty gradients, the other levels are unaffected."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 8), (0, 4), (4, 0)]
    feats = [torch.randn(2, 70, h, w, generator=gen).to(dtype).to(device).requires_grad_() for h, w in shapes]
    # sqrt(area) 40 -> level 0, 150 -> level 1 (H = 0), 400 -> level 2 (W = 0)
    sides = [40.0, 150.0, 400.0, 40.0, 150.0, 400.0]
    boxes = torch.tensor([[2.0, 3.0, 2.0 + s, 3.0 + s] for s in sides], device=device)
    batch_idx = torch.tensor([0, 0, 0, 1, 1, 1], device=device)
    assert assign_levels_reference(boxes, 3, 224.0, 4, 2).tolist() == [0, 1, 2, 0, 1, 2]
    out, ref = _both(feats, boxes, batch_idx, output_size=3, bin_major=bin_major)
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2, msg="output")
    assert not out[[1, 2, 4, 5]].any() and out[[0, 3]].abs().sum() > 0
    out.backward(torch.ones_like(out))
    assert [tuple(f.grad.shape) for f in feats] == [tuple(f.shape) for f in feats]
    assert feats[0].grad.abs().sum() > 0


def test_reference_backward_matches_the_kernel_backward():
    """The deterministic-mode backward (autograd through the reference at zero maps: RoIAlign is linear
    in the maps) against the CPU kernel's backward, with every option passed through, both layouts."""
    if not _extension.has_kernel("roi_align_multilevel", "cpu"):
        pytest.skip("diffdet._C has no CPU kernel")
    from diffdet.ops.roi_align_multilevel import _reference_backward

    feats = make_features(channels=6, levels=3)
    boxes, batch_idx = make_boxes(40)
    sizes = ([f.shape[2] for f in feats], [f.shape[3] for f in feats])
    for bin_major, channels_last in [(False, False), (True, True)]:
        options = (5, 3, False, 150.0, 4, 2, bin_major)
        shape = (40, 25, 6) if bin_major else (40, 6, 5, 5)
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        got = _reference_backward(grad, boxes, batch_idx, (2, 6), sizes, options, channels_last)
        want = torch.ops.diffdet._roi_align_multilevel_backward(
            grad, boxes, batch_idx, 2, 6, *sizes, *options, channels_last
        )
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for level, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=f"grad[features[{level}]]")


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) for one test, then the previous setting."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def test_deterministic_mode_changes_only_the_cuda_backward(deterministic):
    """The backend choice: deterministic mode sends the CUDA backward (atomics) to the reference, never
    the forward (which stays the sync-free kernel), and leaves the CPU backward (no atomics) alone."""
    from diffdet.ops.roi_align_multilevel import _reference_backward_needed

    assert _reference_backward_needed("cuda")
    assert not _reference_backward_needed("cpu")
    torch.use_deterministic_algorithms(False)
    assert not _reference_backward_needed("cuda")


@pytest.mark.gpu
@needs_cuda_kernel
def test_roi_align_multilevel_cuda_deterministic_forward_captures_in_a_graph(deterministic):
    """Deterministic mode keeps the forward on the kernel: no host sync, so a CUDA graph captures it."""
    feats = [f.cuda() for f in make_features(channels=67)]
    boxes, batch_idx = make_boxes(300)
    boxes, batch_idx = boxes.cuda(), batch_idx.cuda()
    eager = roi_align_multilevel(feats, boxes, batch_idx)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = roi_align_multilevel(feats, boxes, batch_idx)
    graph.replay()
    assert torch.equal(captured, eager)


@pytest.mark.gpu
@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_roi_align_multilevel_cuda_deterministic_backward(deterministic, dtype):
    """Deterministic mode: the backward avoids the kernel's atomics (a direct call of the backward op
    raises), gives the same bits twice and matches the CPU kernel's gradient."""
    feats = make_features(channels=67)
    boxes, batch_idx = make_boxes(300)
    runs = []
    for _ in range(2):
        maps = [f.to("cuda", dtype).requires_grad_() for f in feats]
        roi_align_multilevel(maps, boxes.cuda(), batch_idx.cuda()).sum().backward()
        runs.append([m.grad for m in maps])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    cpu = [f.to(dtype).requires_grad_() for f in feats]
    torch.use_deterministic_algorithms(False)
    roi_align_multilevel(cpu, boxes, batch_idx).sum().backward()
    for level, (got, want) in enumerate(zip(runs[0], cpu, strict=True)):
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(
            got.cpu().float(), want.grad.float(), atol=tol, rtol=tol, msg=f"level {level}"
        )
    torch.use_deterministic_algorithms(True)
    grad = torch.ones(300, 67, 7, 7, device="cuda", dtype=dtype)
    with pytest.raises(RuntimeError, match="deterministic"):
        torch.ops.diffdet._roi_align_multilevel_backward(
            grad, boxes.cuda(), batch_idx.cuda(), 2, 67, [64, 32, 16, 8], [80, 40, 20, 10],
            7, 2, True, 224.0, 4, 2, False, False,
        )  # fmt: skip
