"""DiffusionDet end to end on a tiny config: the API contract, training, batching, backends, dtypes."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from detector_kit import (
    assert_cuda_graph_replay_equals_eager,
    assert_same_detections,
    random_images,
    tame_detector,
    with_frozen_bn_statistics,
)

from diffdet.modeling import CudaGraphSampler, ModelConfig, build_detector
from diffdet.modeling.box_ops import box_iou
from diffdet.modeling.diffusion import SCHEDULE_BUFFERS
from diffdet.modeling.sampler import draw_noise

TINY = dict(
    backbone="R18", num_classes=5, num_proposals=20, hidden_dim=32, dim_feedforward=64, nheads=2,
    dim_dynamic=8, min_size_test=64, max_size_test=96,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(one_thread):
    return tame_detector(ModelConfig(**TINY))


def test_eval_returns_torchvision_style_detections(model):
    images = [random_images(1, 50, 70)[0], random_images(1, 64, 96)[0].float() / 255]
    out = model(images, steps=2, seed=0)
    assert len(out) == 2
    for det, image in zip(out, images, strict=True):
        n = det["boxes"].shape[0]
        assert (
            n > 0
            and det["boxes"].shape == (n, 4)
            and det["scores"].shape == (n,)
            and det["labels"].shape == (n,)
        )
        assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        h, w = image.shape[1:]
        b = det["boxes"]
        assert float(b[:, 0::2].min()) >= 0 and float(b[:, 0::2].max()) <= w
        assert float(b[:, 1::2].min()) >= 0 and float(b[:, 1::2].max()) <= h
        assert bool(((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all())
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
        assert int(det["labels"].min()) >= 0 and int(det["labels"].max()) < 5
    assert len(model(images[:1], steps=1, seed=0, max_detections=3)[0]["scores"]) <= 3


def test_seed_makes_inference_deterministic(model):
    a = model(random_images(1), steps=2, seed=11)[0]
    b = model(random_images(1), steps=2, seed=11)[0]
    assert_same_detections(a, b, atol=0)


def test_train_mode_returns_18_weighted_losses_and_backpropagates():
    torch.manual_seed(0)
    m = build_detector(ModelConfig(**TINY)).train()
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0], [50.0, 5.0, 90.0, 30.0]]),
            "labels": torch.tensor([1, 4]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = m(random_images(2), targets)
    names = {f"loss_{k}{s}" for k in ("ce", "bbox", "giou") for s in ["", *(f"_{i}" for i in range(5))]}
    assert set(losses) == names
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert m.head.head_series[0].inst_interact.dynamic_layer.weight.grad is not None
    assert m.head.time_mlp[1].weight.grad is not None
    assert m.backbone.bottom_up.stem.conv1.weight.grad is None  # frozen (freeze_at = 2)
    with pytest.raises(ValueError, match="targets"):
        m(random_images(1))
    with pytest.raises(ValueError, match="labels"):
        m(random_images(1), [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([7])}])


def test_train_step_runs_under_bf16_autocast():
    torch.manual_seed(0)
    m = build_detector(ModelConfig(**TINY)).train()
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([2])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(random_images(1), targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert m.head.head_series[0].inst_interact.norm1.weight.grad.dtype == torch.float32


def test_reference_r50_layout_and_size():
    # REFERENCE.md §3: 549 keys (12 buffers, 281 backbone, 256 head), 110.67 M parameters.
    m = build_detector(ModelConfig())
    state = m.state_dict()
    assert len(state) == 549
    assert (
        sum(k.startswith("backbone.") for k in state) == 281
        and sum(k.startswith("head.") for k in state) == 256
    )
    assert list(state)[:12] == list(SCHEDULE_BUFFERS)
    params = {n: p.numel() for n, p in m.named_parameters()}
    assert round(sum(params.values()) / 1e6, 2) == 110.67
    assert round(sum(v for n, v in params.items() if n.startswith("head.")) / 1e6, 2) == 83.87


def test_batch_with_steps_gives_each_image_its_own_result(model):
    images = random_images(4)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    batch = model(images, steps=4, generator=gens)
    for i, image in enumerate(images):
        alone = model([image], steps=4, generator=[torch.Generator().manual_seed(100 + i)])[0]
        assert_same_detections(batch[i], alone)


def test_reference_ensemble_runs_batches_image_by_image(model):
    images = random_images(2)
    batch, inter = model(
        images, steps=2, ensemble="reference", generator=[torch.Generator().manual_seed(i) for i in range(2)],
        return_intermediates=True,
    )  # fmt: skip
    for i, image in enumerate(images):
        alone = model([image], steps=2, ensemble="reference", generator=torch.Generator().manual_seed(i))[0]
        assert_same_detections(batch[i], alone)
    assert [(r["time"], r["time_next"]) for r in inter] == [(999, 499), (499, -1)]
    assert inter[0]["pred_logits"].shape == (6, 2, 20, 5) and inter[0]["num_kept"].shape == (2,)


def test_reference_and_all_agree_at_one_step_with_the_same_start(model):
    init = torch.randn(2, 20, 4, generator=torch.Generator().manual_seed(3))
    a = model(random_images(2), steps=1, init_boxes=init, ensemble="all")
    b = model(random_images(2), steps=1, init_boxes=init, ensemble="reference")
    for x, y in zip(a, b, strict=True):
        assert_same_detections(x, y, atol=0)


def test_reference_ensemble_follows_the_global_seed(model):
    torch.manual_seed(9)
    a = model(random_images(1), steps=3, ensemble="reference")[0]
    b = model(random_images(1), steps=3, ensemble="reference", seed=9)[0]
    assert_same_detections(a, b, atol=0)


def test_intermediates_hold_every_step_and_stage(model):
    out, inter = model(random_images(2), steps=3, seed=0, return_intermediates=True)
    assert len(out) == 2 and [r["time"] for r in inter] == [999, 665, 332]
    for r in inter:
        assert r["pred_logits"].shape == (6, 2, 20, 5) and r["pred_boxes"].shape == (6, 2, 20, 4)
        assert r["boxes"].shape == (2, 20, 4) and r["img"].shape == (2, 20, 4)
    assert inter[-1]["num_kept"] is None and inter[0]["num_kept"].dtype == torch.int64


def test_fast_and_reference_op_backends_give_the_same_detections(model, monkeypatch):
    fast = model(random_images(2), steps=2, seed=4)
    monkeypatch.setenv("DIFFDET_BACKEND", "reference")
    ref = model(random_images(2), steps=2, seed=4)
    for a, b in zip(fast, ref, strict=True):
        assert_same_detections(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_fp32_on_high_score_detections(model, dtype):
    low = copy.deepcopy(model).to(dtype)
    assert all(getattr(low, n).dtype == torch.float64 for n in SCHEDULE_BUFFERS)
    assert low.pixel_mean.dtype == torch.float32
    init = torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(0))
    ref = model(random_images(1), steps=1, init_boxes=init)[0]
    got = low(random_images(1), steps=1, init_boxes=init)[0]
    assert got["boxes"].dtype == torch.float32
    top = ref["scores"] >= ref["scores"][min(4, len(ref["scores"]) - 1)]
    for box, label in zip(ref["boxes"][top], ref["labels"][top], strict=True):
        same_class = got["boxes"][got["labels"] == label]
        assert same_class.numel() and float(box_iou(box[None], same_class).max()) > 0.9


@torch.no_grad()
def test_bf16_model_pools_bf16_maps_and_keeps_boxes_sampler_and_nms_in_fp32(model, monkeypatch):
    """``model.to(torch.bfloat16)``: the pyramid and the head's logits are bf16, the boxes the sampler
    moves and NMS sees are float32."""
    import diffdet.modeling.head as head_module
    import diffdet.modeling.sampler as sampler_module

    low = copy.deepcopy(model).to(torch.bfloat16)
    seen = {}
    pool, nms = head_module.roi_align_multilevel, sampler_module.batched_nms

    def pool_spy(maps, boxes, *args, **kwargs):
        seen["maps"] = {(m.dtype, m.is_contiguous(memory_format=torch.channels_last)) for m in maps}
        return pool(maps, boxes, *args, **kwargs)

    def nms_spy(boxes, scores, *args, **kwargs):
        seen["nms"] = (boxes.dtype, scores.dtype)
        return nms(boxes, scores, *args, **kwargs)

    monkeypatch.setattr(head_module, "roi_align_multilevel", pool_spy)
    monkeypatch.setattr(sampler_module, "batched_nms", nms_spy)
    dets, steps = low(random_images(1), steps=2, seed=0, return_intermediates=True)
    assert seen["maps"] == {(torch.bfloat16, True)}
    assert seen["nms"] == (torch.float32, torch.float32)
    for step in steps:
        assert step["pred_logits"].dtype == torch.bfloat16
        assert step["img"].dtype in (torch.float32, torch.float64) and step["boxes"].dtype == torch.float32
        assert step["pred_boxes"].dtype == torch.float32
    assert dets[0]["boxes"].dtype == torch.float32 and dets[0]["scores"].dtype == torch.float32


@torch.no_grad()
def test_inference_fusion_gives_the_same_detections_as_the_published_ops(model):
    """Folded FrozenBN + channels-last backbone + oneDNN post-ops (the default) against the unfolded
    NCHW backbone the published code runs: same maps within float32 rounding, same detections."""
    fused = with_frozen_bn_statistics(model)
    plain = copy.deepcopy(fused).fuse_for_inference(False)
    images = random_images(2)
    batch = fused.preprocess(images, resize=True)
    got, want = fused.features(batch.tensor), plain.features(batch.tensor)
    for level, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(), f"p{level + 2}"
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=f"p{level + 2}")
    for a, b in zip(fused(images, steps=2, seed=1), plain(images, steps=2, seed=1), strict=True):
        assert_same_detections(a, b)


def test_training_runs_the_unfolded_reference_ops(model):
    """With autograd on, each backbone conv is conv -> FrozenBN (-> add -> ReLU) bit for bit."""
    fused = with_frozen_bn_statistics(model)
    conv = fused.backbone.bottom_up.res2[0].conv1
    x = torch.randn(1, conv.in_channels, 8, 12, requires_grad=True)
    with torch.no_grad():
        conv(x)  # warm the folded cache: it must not be used below
    expected = torch.relu(
        conv.norm(torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding))
    )
    assert torch.equal(conv(x, relu=True), expected)


@torch.no_grad()
def test_folded_weights_follow_in_place_updates_and_load_state_dict(model):
    fused = with_frozen_bn_statistics(model)
    conv = fused.backbone.bottom_up.stem.conv1
    x = torch.randn(1, 3, 16, 16)
    fused.fuse_for_inference()  # folds now
    for change in (lambda: conv.weight.mul_(2.0), lambda: conv.norm.running_var.add_(1.0)):
        change()
        expected = conv.norm(torch.nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding))
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    before = conv(x)
    other = build_detector(ModelConfig(**TINY))
    fused.load_state_dict(other.state_dict())
    new = other.backbone.bottom_up.stem.conv1
    expected = new.norm(torch.nn.functional.conv2d(x, new.weight, None, new.stride, new.padding))
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, expected)


def test_fused_model_state_dict_keeps_the_reference_layout_and_round_trips(model, tmp_path):
    """A model ready to detect (fusions warm) saves the reference layout, and its state_dict loads
    strictly into a fresh unfused model, tensor for tensor, with the same detections."""
    fused = with_frozen_bn_statistics(model).fuse_for_inference()
    fused(random_images(1), steps=1, seed=0)
    state = fused.state_dict()
    fresh = build_detector(ModelConfig(**TINY))
    assert list(state) == list(fresh.state_dict())
    assert any(k.endswith("norm.running_var") for k in state) and not any("_folded" in k for k in state)
    torch.save(state, tmp_path / "model.pth")
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True), strict=True)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    fresh.eval().fuse_for_inference(False)
    assert_same_detections(
        fused(random_images(1), steps=2, seed=3)[0], fresh(random_images(1), steps=2, seed=3)[0]
    )


def test_state_dict_round_trip_and_float64_buffers(model):
    state = model.state_dict()
    assert all(state[n].dtype == torch.float64 and state[n].shape == (1000,) for n in SCHEDULE_BUFFERS)
    assert "pixel_mean" not in state
    other = build_detector(ModelConfig(**TINY))
    other.load_state_dict(state, strict=True)
    assert torch.equal(other.head.head_series[3].linear2.weight, model.head.head_series[3].linear2.weight)


def test_resize_maps_boxes_back_to_the_original_image(model):
    image = random_images(1, 30, 45)[0]
    out = model([image], steps=1, seed=0)[0]
    assert float(out["boxes"][:, 0::2].max()) <= 45 and float(out["boxes"][:, 1::2].max()) <= 30
    unresized = model([image], steps=1, seed=0, resize=False)[0]
    assert float(unresized["boxes"][:, 0::2].max()) <= 45


@pytest.mark.parametrize(
    ("images", "match"),
    [
        ([torch.zeros(3, 8, 8, dtype=torch.int32)], "uint8 or floating"),
        ([torch.zeros(8, 8, dtype=torch.uint8)], r"\[3, H, W\]"),
        (torch.zeros(3, 8, 8), r"\[B, 3, H, W\]"),
        ([torch.full((3, 8, 8), 2.0)], r"\[0, 1\]"),
        ([torch.zeros(3, 0, 8, dtype=torch.uint8)], "H, W >= 1"),
        ("image.jpg", "tensor"),
    ],
)
def test_bad_images_raise_clear_errors(model, images, match):
    with pytest.raises(ValueError, match=match):
        model(images)


def test_bad_knobs_raise_clear_errors(model):
    for kwargs, match in [
        ({"steps": 0}, "steps"),
        ({"num_boxes": -1}, "num_boxes"),
        ({"ensemble": "some"}, "ensemble"),
        ({"nms_iou": 1.5}, "nms_iou"),
        ({"max_detections": -2}, "max_detections"),
        ({"init_boxes": torch.zeros(1, 3, 4)}, "init_boxes"),
    ]:
        with pytest.raises(ValueError, match=match):
            model(random_images(1), **kwargs)


def test_degenerate_inputs_return_empty_or_valid_results(model):
    assert model([]) == []
    empty = model(random_images(2), num_boxes=0)
    assert len(empty) == 2 and all(d["boxes"].shape == (0, 4) for d in empty)
    tiny = model([torch.full((3, 1, 1), 128, dtype=torch.uint8)], steps=2, seed=0)[0]
    assert tiny["boxes"].shape[1] == 4 and float(tiny["boxes"].amax()) <= 1.0
    tiny_raw = model([torch.full((3, 1, 1), 128, dtype=torch.uint8)], resize=False, steps=2, seed=0)[0]
    assert tiny_raw["boxes"].shape[1] == 4


def test_cuda_graph_sampler_needs_cuda_and_runs_the_eager_computation(model):
    with pytest.raises(ValueError, match="CUDA"):
        CudaGraphSampler(model, batch_size=1, padded_size=(64, 96))
    # The function the graph captures, run eagerly, is what detect(ensemble="all") computes.
    batch = model.preprocess(random_images(2), resize=True)
    noise = draw_noise(3, 2, 20, torch.device("cpu"), torch.Generator().manual_seed(2))
    captured = types.SimpleNamespace(model=model, steps=2, renewal_threshold=0.5)
    with torch.no_grad():
        candidates = CudaGraphSampler.run(captured, batch.tensor, batch.image_whwh, noise)
    got = model.finalize(candidates, batch, nms_iou=0.5, max_detections=None)
    expect = model(random_images(2), steps=2, generator=torch.Generator().manual_seed(2))
    for a, b in zip(got, expect, strict=True):
        assert_same_detections(a, b, atol=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_cuda_graph_replay_equals_eager_detection(model):
    assert_cuda_graph_replay_equals_eager(model)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graph_sampler_on_a_device_that_is_not_current(model):
    """A model on cuda:1 with cuda:0 current: capture and replay happen on cuda:1 (its stream, its
    Triton launches), and the result equals eager detection there."""
    m = copy.deepcopy(model).to("cuda:1").fuse_for_inference()
    images = [im.to("cuda:1") for im in random_images(2)]
    with torch.cuda.device(0):
        graph = CudaGraphSampler(m, batch_size=2, padded_size=(64, 96), num_boxes=20, steps=2)
        got = graph(images, generator=torch.Generator(device="cuda:1").manual_seed(0))
    expect = m(images, steps=2, generator=torch.Generator(device="cuda:1").manual_seed(0))
    for a, b in zip(got, expect, strict=True):
        assert a["boxes"].device == torch.device("cuda:1")
        assert_same_detections(a, b, atol=1e-5)


@pytest.mark.gpu
@cuda
def test_sampling_loop_has_no_host_sync_on_cuda(model):
    m = copy.deepcopy(model).cuda()
    batch = m.preprocess([im.cuda() for im in random_images(2)], resize=True)
    noise = draw_noise(7, 2, 20, torch.device("cuda"), None)

    def sample():
        with torch.no_grad():
            features = m.features(batch.tensor)
            m.sampler.sample(
                lambda b, t: m.head(features, b, t),
                batch.image_whwh,
                noise=noise,
                steps=4,
                renewal_threshold=0.5,
            )

    sample()  # compile and autotune the kernels first (autotuning synchronises)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sample()
    finally:
        torch.cuda.set_sync_debug_mode("default")
