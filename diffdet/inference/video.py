"""Detection on a video file: an annotated video and a JSON lines file of per-frame detections.

Frames stream from PyAV's decoder through the detector into PyAV's encoder, so memory holds at most
``every x batch_size`` frames whatever the video's length. Any container and codec FFmpeg reads is
accepted; the output is H.264 in MP4 at the input's frame rate and size. Every frame is written; the
frames between two detected ones (``every`` > 1) carry the boxes of the last detected frame. Each JSON
line is flushed when written, and the output video is closed properly even when decoding fails, so a
failure leaves valid files covering the frames reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from diffdet.errors import InputError
from diffdet.optional import require

if TYPE_CHECKING:  # torch and PyAV load on first use, so ``diffdet --help`` stays fast
    import numpy as np
    from torch import nn


@dataclass(frozen=True)
class VideoRun:
    """What :func:`run_detect_video` wrote.

    Attributes:
        video: the annotated video.
        jsonl: the JSON lines file, one line per detected frame.
        frames: frames written to ``video``.
        detected: frames run through the detector.
    """

    video: Path
    jsonl: Path
    frames: int
    detected: int


def is_video(path: str | Path) -> bool:
    """A file whose suffix is not an image's (:data:`~diffdet.inference.images.IMAGE_SUFFIXES`): it is
    handed to FFmpeg, which reads containers by content."""
    from diffdet.inference.images import IMAGE_SUFFIXES

    path = Path(path)
    return path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES


def _av():
    return require("av", "av", "video input (pip install -e '.[video]')")


def _decoded_frames(path: Path, counter: list[int]) -> Iterator[np.ndarray]:
    """RGB [H, W, 3] uint8 frames of ``path``'s first video stream; ``counter[0]`` counts them.

    Raises:
        InputError: the file cannot be opened as a video, holds no video stream, or fails to decode
            (the message names the file and the frame reached).
    """
    av = _av()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise InputError(f"{path}: cannot be read as a video (at frame 0): {err}") from err
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        # Slice threads only: with frame threads FFmpeg drops the error of a truncated stream silently.
        stream.thread_type = "SLICE"
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.FFmpegError as err:
                raise InputError(f"{path}: decoding failed at frame {counter[0]}: {err}") from err
            counter[0] += 1
            yield frame.to_ndarray(format="rgb24")


def video_info(path: Path) -> tuple[Fraction, int]:
    """(frame rate in frames per second, declared frame count or 0 when unknown) of ``path``.

    Raises:
        InputError: the file cannot be opened as a video or holds no video stream.
    """
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return Fraction(rate), int(stream.frames or 0)
    except (av.FFmpegError, OSError) as err:
        raise InputError(f"{path}: cannot be read as a video (at frame 0): {err}") from err


class _Encoder:
    """H.264 MP4 writer opened on the first frame (when the size is known); yuv420p needs even sides,
    so odd-sized videos are written yuv444p to keep their exact size."""

    def __init__(self, path: Path, rate: Fraction) -> None:
        self.av = _av()
        self.path, self.rate = path, rate
        self.container = self.stream = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if self.container is None:
            h, w = rgb.shape[:2]
            self.container = self.av.open(str(self.path), "w")
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            self.stream.width, self.stream.height = w, h
            self.stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        frame = self.av.VideoFrame.from_ndarray(rgb, format="rgb24")
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
            self.container.close()


def _detection_line(frame: int, time_s: float, output: dict, model: nn.Module) -> str:
    from diffdet.evaluation.results import to_coco_results

    entries = to_coco_results(frame, output, list(model.category_ids))
    names = [model.class_names[int(label)] for label in output["labels"]]
    detections = [
        {"category_id": e["category_id"], "name": name, "bbox": e["bbox"], "score": e["score"]}
        for e, name in zip(entries, names, strict=True)
    ]
    return json.dumps({"frame": frame, "time": round(time_s, 6), "detections": detections})


def run_detect_video(
    model: nn.Module,
    path: Path,
    out_dir: Path,
    *,
    score_thr: float,
    every: int = 1,
    batch_size: int = 1,
    progress: bool = True,
    **inference_kwargs: object,
) -> VideoRun:
    """Detect objects in the frames of a video; write ``out_dir/<stem>.mp4`` and ``<stem>.jsonl``.

    Args:
        model: a detector in eval mode with ``class_names``, ``category_ids`` and ``device``
            (a :class:`~diffdet.modeling.tta.DiffusionDetWithTTA` too).
        path: the video (any container and codec FFmpeg reads).
        out_dir: output folder (created).
        score_thr: detections with score >= this are drawn and written.
        every: run the detector on every ``every``-th frame (0, every, 2 x every, ...).
        batch_size: detected frames per forward pass.
        progress: show a progress bar (frames per second).
        **inference_kwargs: per-call knobs for the model (``num_boxes``, ``steps``, ``seed``...).

    Returns:
        The files written and the frame counts. Each JSON line is ``{"frame": index, "time": seconds,
        "detections": [{"category_id", "name", "bbox": [x, y, w, h] pixels, "score"}]}``.

    Raises:
        InputError: ``every`` or ``batch_size`` < 1, or the video cannot be read or fails part way
            (the message names the file and the frame reached; the files then hold the frames before).
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from diffdet.visualize import draw_detections

    if every < 1:
        raise InputError(f"--every must be >= 1, got {every}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    rate, declared = video_info(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = VideoRun(out_dir / f"{path.stem}.mp4", out_dir / f"{path.stem}.jsonl", 0, 0)
    if run.video.resolve() == path.resolve():
        raise InputError(f"{path}: --out {out_dir} would overwrite the input video; choose another folder")
    device = model.device
    counter = [0]
    detected = 0
    last: dict | None = None  # the latest detected frame's kept detections, drawn on the frames after it
    pending: list[tuple[int, np.ndarray]] = []  # frames read, not yet written: up to every x batch_size

    def flush(encoder: _Encoder, jsonl) -> None:
        nonlocal detected, last
        picked = [(i, f) for i, f in pending if i % every == 0]
        images = [torch.from_numpy(f).permute(2, 0, 1).to(device) for _, f in picked]
        outputs = model(images, **inference_kwargs)
        by_frame = dict(zip((i for i, _ in picked), outputs, strict=True))
        for i, rgb in pending:
            if i in by_frame:
                out = by_frame[i]
                keep = out["scores"] >= score_thr
                last = {k: v[keep].cpu() for k, v in out.items()}
                jsonl.write(_detection_line(i, float(i / rate), last, model) + "\n")
                jsonl.flush()
                detected += 1
            drawn = draw_detections(rgb, last, model.class_names, score_threshold=score_thr)
            encoder.write(np.asarray(drawn))
        pending.clear()

    encoder = _Encoder(run.video, rate)
    with ExitStack() as stack, open(run.jsonl, "w") as jsonl:
        stack.callback(encoder.close)
        bar = stack.enter_context(
            tqdm(total=declared or None, desc="detect video", unit="frame", disable=not progress)
        )
        try:
            for i, rgb in enumerate(_decoded_frames(path, counter)):
                pending.append((i, rgb))
                if sum(j % every == 0 for j, _ in pending) == batch_size and (i + 1) % every == 0:
                    flush(encoder, jsonl)
                bar.update(1)
        finally:
            # Frames decoded before a failure are still detected and written.
            if pending:
                flush(encoder, jsonl)
    if counter[0] == 0:
        raise InputError(f"{path}: no video frame could be decoded")
    return VideoRun(run.video, run.jsonl, encoder.frames, detected)
