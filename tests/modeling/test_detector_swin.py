"""DiffusionDet with a Swin backbone: everything the ResNet model does (batches, any boxes and steps,
bf16, fuse_for_inference, training, bench/detect, the CUDA-graph sampler) at a tiny size."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import pytest
import torch
from detector_kit import (
    assert_cuda_graph_replay_equals_eager,
    assert_same_detections,
    random_images,
    tame_detector,
)

from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main
from diffdet.modeling import ModelConfig, build_detector
from diffdet.modeling.backbone import SwinTransformer

TINY_SWIN = dict(
    backbone="SwinNano", num_classes=5, num_proposals=20, hidden_dim=32, dim_feedforward=64, nheads=2,
    num_heads=2, dim_dynamic=8, min_size_test=64, max_size_test=96,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(one_thread):
    return tame_detector(ModelConfig(**TINY_SWIN))


def test_swin_detector_is_built_from_the_config(model):
    assert isinstance(model.backbone.bottom_up, SwinTransformer)
    assert list(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5"]
    assert all(p.requires_grad for p in model.backbone.parameters())  # freeze_at ignored, as published


def test_batches_with_any_boxes_and_steps_give_each_image_its_own_result(model):
    images = [*random_images(2, 64, 96), random_images(1, 50, 70)[0]]  # one image padded differently
    for num_boxes, steps in ((7, 1), (20, 3)):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        batch = model(images, num_boxes=num_boxes, steps=steps, generator=gens)
        for i, image in enumerate(images):
            alone = model(
                [image], num_boxes=num_boxes, steps=steps, generator=torch.Generator().manual_seed(i)
            )
            assert_same_detections(batch[i], alone[0])
        assert any(len(d["scores"]) for d in batch)


def test_bfloat16_matches_fp32_on_high_score_detections(model):
    low = copy.deepcopy(model).to(torch.bfloat16)
    image = random_images(1)
    expect = model(image, steps=1, seed=0)[0]
    got = low(image, steps=1, seed=0)[0]
    assert got["boxes"].dtype == torch.float32 and len(got["scores"]) > 0
    top = expect["scores"][:5]
    torch.testing.assert_close(got["scores"][:5], top, atol=0.05, rtol=0)


def test_fuse_for_inference_is_a_no_op(model):
    fused = copy.deepcopy(model)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    assert fused.fuse_for_inference() is fused
    after = fused.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert_same_detections(
        fused(random_images(1), steps=2, seed=3)[0], model(random_images(1), steps=2, seed=3)[0], atol=0
    )


def test_train_mode_losses_reach_the_swin_trunk():
    torch.manual_seed(0)
    m = build_detector(ModelConfig(**TINY_SWIN)).train()
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 2.0, 30.0, 60.0], [50.0, 20.0, 90.0, 60.0]]),
            "labels": torch.tensor([0, 4]),
        },
    ]
    losses = m(random_images(2), targets)
    sum(losses.values()).backward()
    trunk = m.backbone.bottom_up
    assert all(p.grad is not None for p in trunk.parameters())
    assert float(trunk.layers[0].blocks[1].attn.relative_position_bias_table.grad.abs().sum()) > 0


def test_train_step_runs_under_bf16_autocast():
    torch.manual_seed(0)
    m = build_detector(ModelConfig(**TINY_SWIN)).train()
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(random_images(1), targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert m.backbone.bottom_up.patch_embed.proj.weight.grad is not None


def test_bench_command_runs_a_swin_model(tmp_path):
    overrides = [
        f"model.{k}={v}" for k, v in TINY_SWIN.items() if k not in ("min_size_test", "max_size_test")
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            ["bench", *overrides, "--device", "cpu", "--size", "64x96", "--boxes", "4", "--steps", "1",
             "--warmup", "0", "--iters", "1", "--out", str(tmp_path), "--name", "swin"]
        )  # fmt: skip
    assert status == 0
    payload = json.loads((tmp_path / "swin.json").read_text())
    assert payload["meta"]["backbone"] == "SwinNano" and len(payload["records"]) >= 1


COCO128 = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128"


@pytest.mark.skipif(not (COCO128 / "train2017").is_dir(), reason=f"coco128 not found at {COCO128}")
def test_detect_and_eval_commands_run_a_swin_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY_SWIN, "num_classes": 80})
    weights = save_checkpoint(tmp_path / "swin.pth", build_detector(cfg), cfg)
    image = COCO128 / "train2017" / "000000000009.jpg"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(
            ["detect", str(image), "--weights", str(weights), "--score-thr", "0", "--device", "cpu",
             "--out", str(tmp_path / "out"), "--no-progress"]
        )  # fmt: skip
    assert status == 0
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} == {9}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main(
            ["eval", "--data", str(COCO128 / "annotations" / "instances_train2017.json"), "--weights",
             str(weights), "--max-images", "2", "--device", "cpu", "--no-progress"]
        )  # fmt: skip
    assert status == 0 and out.getvalue().strip().splitlines()[-2].split()[0] == "AP"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_cuda_graph_replay_equals_eager_detection_with_swin(model):
    assert_cuda_graph_replay_equals_eager(model)


@pytest.mark.gpu
@cuda
def test_swin_attention_on_cuda_equals_the_cpu(model):
    trunk = model.backbone.bottom_up
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expect = trunk(x)
        got = copy.deepcopy(trunk).cuda()(x.cuda())
    for name, value in expect.items():
        torch.testing.assert_close(got[name].cpu(), value, atol=1e-4, rtol=1e-4, msg=name)
