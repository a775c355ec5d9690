"""The exported-detector runtime (:mod:`diffdet.export.runtime`) on a stand-in graph.

The stand-in follows the export file contract (inputs ``images`` uint8 [N, 3, H, W] and ``noise``
[2S - 1, N, P, 4]; outputs ``boxes``, ``scores``, ``labels``, ``num_detections``; ``"diffdet"``
metadata) with arithmetic simple enough to recompute here, so the runtime's own work is checked in
every engine: noise drawn as the PyTorch model draws it, resizing, boxes mapped back, chunking and
padding of batches, knob checks and damaged files. Detections of a real exported detector against the
PyTorch model are checked in tests/export/test_export_same_detections.py.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import onnx
import pytest
import torch
from exportkit import write_stand_in_onnx
from PIL import Image
from torch import nn

from diffdet.cli import build_parser, main
from diffdet.errors import InputError
from diffdet.export.backends import OpenVinoEngine
from diffdet.export.metadata import read_metadata
from diffdet.export.runtime import ExportedDetector, load_exported
from diffdet.modeling.preprocess import postprocess_boxes
from diffdet.modeling.sampler import draw_noise
from diffdet.optional import MissingDependencyError

HEIGHT, WIDTH, BATCH, BOXES, STEPS = 32, 48, 2, 5, 2
METADATA = {
    "height": HEIGHT, "width": WIDTH, "batch": BATCH, "num_boxes": BOXES, "steps": STEPS, "dtype": "fp32",
    "max_detections": BOXES - 1, "renewal_threshold": 0.5, "nms_iou": 0.5, "ensemble": "all",
    "class_names": ["circle", "square"], "category_ids": [1, 2], "format_version": 1, "format": "onnx",
    "score_threshold": None,
}  # fmt: skip


class StandIn(nn.Module):
    """Boxes from the first noise slice (as the sampler maps diffusion space to pixels), scores from
    the last slice and the image's mean, labels from a noise sign; every image keeps P - 1 detections."""

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, w = images.shape[2], images.shape[3]
        x = noise[0].clamp(-2, 2) / 4 + 0.5
        whwh = torch.tensor([w, h, w, h], dtype=torch.float32)
        boxes = torch.cat([x[..., :2] - x[..., 2:] / 2, x[..., :2] + x[..., 2:] / 2], -1) * whwh
        scores = torch.sigmoid(noise[-1, ..., 0] + images.float().mean((1, 2, 3))[:, None] / 255)
        labels = (noise[0, ..., 1] > 0).long()
        num = torch.full((images.shape[0],), boxes.shape[1] - 1, dtype=torch.int64)
        return boxes, scores, labels, num


def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(BATCH, 3, HEIGHT, WIDTH, dtype=torch.uint8), torch.zeros(
        2 * STEPS - 1, BATCH, BOXES, 4
    )


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stand_in") / "stand_in.onnx"
    return write_stand_in_onnx(StandIn(), example_inputs(), path, METADATA)


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stand_in") / "stand_in.pt2"
    program = torch.export.export(StandIn(), example_inputs())
    torch.export.save(program, str(path), extra_files={"diffdet.json": json.dumps(METADATA)})
    return path


def expected(images: list[torch.Tensor], seed: int) -> list[dict[str, torch.Tensor]]:
    """The stand-in's detections recomputed: noise as the model draws it, stretch, map back."""
    noise = draw_noise(
        2 * STEPS - 1, len(images), BOXES, torch.device("cpu"), torch.Generator().manual_seed(seed)
    )
    out = []
    for i, image in enumerate(images):
        resized = torch.nn.functional.interpolate(
            image[None], size=(HEIGHT, WIDTH), mode="bilinear", antialias=True, align_corners=False
        )[0]
        boxes, scores, labels, _ = StandIn()(resized[None], noise[:, i : i + 1])
        keep_n = BOXES - 1
        mapped, keep = postprocess_boxes(boxes[0, :keep_n], (HEIGHT, WIDTH), tuple(image.shape[1:]))
        out.append(
            {"boxes": mapped[keep], "scores": scores[0, :keep_n][keep], "labels": labels[0, :keep_n][keep]}
        )
    return out


def images_of(sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(g["scores"], w["scores"], rtol=1e-5, atol=1e-5)
        assert torch.equal(g["labels"], w["labels"])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_runtimes_draw_noise_resize_chunk_and_map_back(onnx_file, runtime):
    model = load_exported(onnx_file, runtime, threads=1)
    # 3 images (a chunk of 2, then 1 padded to 2), of the export size, larger and of another aspect.
    images = images_of([(HEIGHT, WIDTH), (64, 96), (40, 30)])
    assert_same(model(images, seed=3), expected(images, 3))
    assert model.class_names == ("circle", "square") and model.category_ids == (1, 2)
    assert model.eval() is model and model.to("cpu") is model


def test_pt2_runs_in_torch(pt2_file):
    model = load_exported(pt2_file)
    images = images_of([(HEIGHT, WIDTH)])
    assert model.runtime == "torch"
    assert_same(model(images, seed=0), expected(images, 0))


def test_a_batch_gives_what_its_images_give_one_by_one_with_one_generator_each(onnx_file):
    model = load_exported(onnx_file, threads=1)
    images = images_of([(HEIGHT, WIDTH), (HEIGHT, WIDTH), (HEIGHT, WIDTH)])
    batch = model(images, generator=[torch.Generator().manual_seed(s) for s in (4, 5, 6)])
    alone = [model([im], seed=s)[0] for im, s in zip(images, (4, 5, 6), strict=True)]
    assert_same(batch, alone)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("num_boxes", 100),
        ("steps", 1),
        ("renewal_threshold", 0.3),
        ("ensemble", "reference"),
        ("nms_iou", 0.6),
    ],
)
def test_knobs_other_than_the_exported_ones_are_refused(onnx_file, knob, value):
    model = load_exported(onnx_file, threads=1)
    with pytest.raises(InputError, match=f"exported with {knob}="):
        model(images_of([(HEIGHT, WIDTH)]), **{knob: value})
    exported = {
        "num_boxes": BOXES,
        "steps": STEPS,
        "renewal_threshold": 0.5,
        "ensemble": "all",
        "nms_iou": 0.5,
    }
    assert len(model(images_of([(HEIGHT, WIDTH)]), **{knob: exported[knob]})) == 1


def test_max_detections_caps_and_above_the_export_is_refused(onnx_file):
    model = load_exported(onnx_file, threads=1)
    assert len(model(images_of([(HEIGHT, WIDTH)]), seed=0, max_detections=2)[0]["scores"]) <= 2
    with pytest.raises(InputError, match="keeps at most"):
        model(images_of([(HEIGHT, WIDTH)]), max_detections=BOXES)


def test_damaged_or_foreign_files_are_refused_naming_the_file(onnx_file, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[:300])
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(onnx_file))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    for path, message in [
        (truncated, "truncated.onnx"), (bare, "without diffdet metadata"),
        (tmp_path / "missing.onnx", "no such file"),
        (tmp_path / "weights.pth", "not an exported detector"),
    ]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            load_exported(path)
    with pytest.raises(InputError, match="cannot run"):
        load_exported(onnx_file, "torch")


def test_every_command_of_docs_deploy_parses():
    text = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [
        line.strip() for block in blocks for line in block.splitlines() if line.startswith("diffdet ")
    ]
    assert {c.split()[1] for c in commands} == {"export", "detect", "eval", "bench"}
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bench_times_an_exported_file_at_its_own_point(onnx_file, tmp_path, capsys, runtime):
    argv = ["bench", "--weights", str(onnx_file), "--runtime", runtime, "--device", "cpu", "--threads", "1"]
    argv += ["--warmup", "0", "--iters", "2"]
    assert main([*argv, "--out", str(tmp_path), "--name", "stand_in"]) == 0
    records = json.loads((tmp_path / "stand_in.json").read_text())["records"]
    assert [(r["mode"], r["num_boxes"], r["steps"], r["batch"]) for r in records] == [
        (runtime, BOXES, STEPS, BATCH)
    ]
    capsys.readouterr()
    assert main([*argv, "--boxes", "7", "--out", str(tmp_path)]) == 2
    assert f"runs {BOXES} boxes x {STEPS} step(s) only" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_detect_draws_and_writes_the_runtimes_detections(onnx_file, tmp_path, runtime):
    folder = tmp_path / "images"
    folder.mkdir()
    image = images_of([(40, 60)])[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / "000000000007.png")
    argv = ["detect", str(folder), "--weights", str(onnx_file), "--runtime", runtime, "--seed", "3"]
    assert main([*argv, "--score-thr", "0", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    want = expected([image], 3)[0]
    assert [r["score"] for r in results] == pytest.approx(want["scores"].tolist(), abs=1e-5)
    assert {r["image_id"] for r in results} == {7} and (tmp_path / "out" / "000000000007.png").is_file()


@pytest.mark.parametrize(("runtime", "package"), [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_engine_names_the_package_to_install(onnx_file, monkeypatch, capsys, runtime, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=f"pip install {package}"):
        load_exported(onnx_file, runtime)
    argv = ["detect", str(onnx_file), "--weights", str(onnx_file), "--runtime", runtime, "--no-progress"]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_openvino_bf16_engine_runs_the_graph(onnx_file):
    engine = OpenVinoEngine(onnx_file, threads=1, precision="bf16")
    model = ExportedDetector(engine, read_metadata(onnx_file), onnx_file, "openvino-bf16")
    images = images_of([(HEIGHT, WIDTH)])
    got, want = model(images, seed=0)[0], expected(images, 0)[0]
    assert torch.equal(got["labels"], want["labels"])  # labels come from the noise's sign, exact in bf16
    torch.testing.assert_close(got["boxes"], want["boxes"], atol=0.5, rtol=0.02)
