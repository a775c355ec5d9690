"""``diffdet detect`` on a video: a short clip made here with PyAV, a tiny random-weight detector."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main
from diffdet.modeling.config import ModelConfig

av = pytest.importorskip("av")

TINY = dict(
    backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
    num_proposals=10, min_size_test=48, max_size_test=64, num_classes=2, class_names=("a", "b"),
    category_ids=(1, 2),
)  # fmt: skip
FRAMES, W, H = 8, 64, 48


@pytest.fixture(scope="module")
def weights(tmp_path_factory, still_detector) -> Path:
    cfg = ModelConfig(**TINY)
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pth", still_detector(cfg), cfg)


def make_clip(path: Path, frames: int = FRAMES, container_options: dict | None = None) -> Path:
    """A noise clip, H.264 at 10 frames per second, every frame decodable on its own stream position."""
    g = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream("libx264", rate=10, options={"tune": "zerolatency"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(frames):
            rgb = g.integers(0, 256, (H, W, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return path


def read_clip(path: Path) -> tuple[int, tuple[int, int], float]:
    with av.open(str(path)) as clip:
        stream = clip.streams.video[0]
        count = sum(1 for _ in clip.decode(stream))
        return count, (stream.height, stream.width), float(stream.average_rate)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def detect(clip: Path, weights: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        "detect", str(clip), "--weights", str(weights), "--device", "cpu", "--steps", "1", "--out", str(out),
        "--no-progress", *extra,
    )  # fmt: skip


def test_video_in_annotated_video_and_json_lines_out(weights, tmp_path, one_thread):
    clip = make_clip(tmp_path / "clip.mp4")
    status, stdout, stderr = detect(clip, weights, tmp_path / "out", "--score-thr", "0", "--batch-size", "3")
    assert status == 0, stderr
    assert f"{FRAMES} frame(s)" in stdout
    assert read_clip(tmp_path / "out" / "clip.mp4") == (FRAMES, (H, W), 10.0)
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert lines[3]["time"] == pytest.approx(0.3)
    assert any(line["detections"] for line in lines), "score-thr 0 keeps the random detector's boxes"
    for det in (d for line in lines for d in line["detections"]):
        assert det["category_id"] in (1, 2) and det["name"] in ("a", "b") and 0 <= det["score"] <= 1
        x, y, w, h = det["bbox"]
        assert 0 <= x <= x + w <= W and 0 <= y <= y + h <= H


def test_every_nth_frame_is_detected_and_every_frame_written(weights, tmp_path, one_thread):
    clip = make_clip(tmp_path / "clip.mkv")
    status, _, stderr = detect(clip, weights, tmp_path / "out", "--every", "3", "--score-thr", "1")
    assert status == 0, stderr
    assert read_clip(tmp_path / "out" / "clip.mp4")[0] == FRAMES
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 3, 6]
    assert all(line["detections"] == [] for line in lines), "nothing scores >= 1 (a sigmoid)"


def test_a_truncated_video_fails_in_one_line_and_keeps_what_was_written(weights, tmp_path, one_thread):
    whole = make_clip(tmp_path / "whole.mp4", frames=10, container_options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    status, _, stderr = detect(cut, weights, tmp_path / "out", "--score-thr", "0")
    assert status == 2 and stderr.count("\n") == 1, stderr
    reached = int(stderr.split("at frame ")[1].split(":")[0])
    assert str(cut) in stderr and 0 < reached < 10
    assert read_clip(tmp_path / "out" / "cut.mp4")[0] == reached
    assert len((tmp_path / "out" / "cut.jsonl").read_text().splitlines()) == reached


def test_a_file_that_is_not_a_video_fails_in_one_line(weights, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 20)
    status, _, stderr = detect(junk, weights, tmp_path / "out")
    assert status == 2 and stderr.count("\n") == 1 and str(junk) in stderr and "frame 0" in stderr


def test_without_pyav_a_video_is_a_one_line_missing_dependency(weights, tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "clip.mp4", frames=2)
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # `import av` now raises ImportError
    status, _, stderr = detect(clip, weights, tmp_path / "out")
    assert status == 2 and stderr.count("\n") == 1 and "'av'" in stderr and "video" in stderr
