"""Malformed input through ``diffdet eval``, ``diffdet detect`` and ``python -m diffdet.train``: each one
ends with exit status 2 and one stderr line naming the file or option, no traceback, and leaves the
user's files as they were (docs/errors.md).

Commands run in-process (``diffdet.cli.main`` / ``diffdet.train.main``); a few run as subprocesses to
prove the real exit code. Every case writes only tiny files; the random-weight detector is saved once.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffdet import train
from diffdet.checkpoint import save_checkpoint
from diffdet.cli import main
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig

pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO reading)")

TINY = dict(
    backbone="R18-half", hidden_dim=16, dim_feedforward=32, nheads=2, num_heads=1, dim_dynamic=4,
    num_proposals=5, min_size_test=64, max_size_test=96, num_classes=1, category_ids=(1,),
    class_names=("person",),
)  # fmt: skip
"""A detector of one class (person, category id 1), small enough to load in a blink."""
TRAIN_MODEL = [f"model.{k}={v}" for k, v in TINY.items() if k not in ("category_ids", "class_names")]


@dataclass
class Kit:
    """The module's good inputs; each case copies what it breaks into its own folder."""

    root: Path
    images: Path  # a.jpg 24x32 (HxW), b.jpg 32x24
    weights: Path
    coco: dict
    odgt_lines: list[dict]


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    root = tmp_path_factory.mktemp("bad_input")
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (32, 24), (90, 120, 30)).save(images / "a.jpg")
    Image.new("RGB", (24, 32), (20, 40, 200)).save(images / "b.jpg")
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    weights = save_checkpoint(root / "tiny.pth", build_detector(cfg), cfg)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 24, "width": 32},
            {"id": 2, "file_name": "b.jpg", "height": 32, "width": 24},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [2, 3, 10, 8], "category_id": 1, "area": 80, "iscrowd": 0},
            {"id": 2, "image_id": 2, "bbox": [4, 4, 6, 12], "category_id": 1, "area": 72, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    box = {"tag": "person", "fbox": [2, 3, 10, 8], "vbox": [2, 3, 10, 8], "hbox": [4, 3, 3, 3]}
    lines = [{"ID": "a", "gtboxes": [box]}, {"ID": "b", "gtboxes": [box]}]
    return Kit(root, images, weights, coco, lines)


def digest(*folders: Path) -> dict[Path, str]:
    """Each file under ``folders`` -> a hash of its bytes."""
    return {
        p: hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- inputs, each broken one way -------------------------------------------------------------------


def write_coco(tmp: Path, kit: Kit, mutate: Callable[[dict], object] | None = None, raw: str = "") -> Path:
    data = json.loads(json.dumps(kit.coco))
    if mutate is not None:
        mutate(data)
    path = tmp / "instances.json"
    path.write_text(raw or json.dumps(data))  # json.dumps writes NaN / Infinity as Python's json reads them
    return path


def write_lvis(tmp: Path, kit: Kit, mutate: Callable[[dict], object]) -> Path:
    data = json.loads(json.dumps(kit.coco))
    for img in data["images"]:
        img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    data["categories"][0]["frequency"] = "f"
    mutate(data)
    path = tmp / "lvis_v1_val.json"
    path.write_text(json.dumps(data))
    return path


def write_odgt(tmp: Path, kit: Kit, lines: list[dict | str] | None = None, raw: bytes = b"") -> Path:
    images = tmp / "Images"
    images.mkdir(exist_ok=True)
    for name in ("a", "b"):
        (images / f"{name}.jpg").write_bytes((kit.images / f"{name}.jpg").read_bytes())
    path = tmp / "annotation_val.odgt"
    body = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in (lines or kit.odgt_lines))
    path.write_bytes(raw or body.encode())
    return path


def with_box(kit: Kit, vbox: object, **extra: object) -> list[dict]:
    """The good odgt lines with line 2's box replaced."""
    box = {"tag": "person", "fbox": [1, 1, 4, 4], "vbox": vbox, "hbox": [1, 1, 2, 2], **extra}
    return [kit.odgt_lines[0], {"ID": "b", "gtboxes": [box]}]


def long_image(folder: Path, name: str = "long.jpg") -> Path:
    """A 20000x20 (WxH) image: its short side would resize to 0 pixels under the model's cap."""
    folder.mkdir(exist_ok=True)
    Image.new("L", (20000, 20), 128).save(folder / name)
    return folder / name


def truncated(kit: Kit, tmp: Path) -> Path:
    data = kit.weights.read_bytes()
    (tmp / "w.pth").write_bytes(data[: len(data) // 2])
    return tmp / "w.pth"


class Payload:
    """Unpickling it would run a command: a loader must refuse it before that."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def payload_pickle(tmp: Path, name: str = "w.pth") -> Path:
    (tmp / name).write_bytes(pickle.dumps({"model": Payload()}))
    return tmp / name


def bad_weights(kind: str, kit: Kit, tmp: Path) -> Path:
    if kind == "truncated":
        return truncated(kit, tmp)
    if kind == "pickle payload":
        return payload_pickle(tmp)
    path = tmp / "w.pth"
    path.write_bytes({"empty": b"", "text": b"these are not weights\n"}[kind])
    return path


# -- the commands -------------------------------------------------------------------------------------


def eval_coco(kit: Kit, data: Path, *extra: str, images: Path | None = None) -> list[str]:
    images = images or kit.images
    return ["eval", "--data", str(data), "--images", str(images), "--weights", str(kit.weights),
            "--device", "cpu", "--no-progress", "--steps", "1", *extra]  # fmt: skip


def eval_odgt(kit: Kit, odgt: Path, *extra: str) -> list[str]:
    return ["eval", "--data", str(odgt), "--weights", str(kit.weights), "--device", "cpu",
            "--no-progress", "--steps", "1", *extra]  # fmt: skip


def detect(kit: Kit, tmp: Path, *extra: str, source: Path | None = None) -> list[str]:
    return ["detect", str(source or kit.images), "--weights", str(kit.weights), "--device", "cpu",
            "--no-progress", "--steps", "1", "--out", str(tmp / "out"), *extra]  # fmt: skip


def training(kit: Kit, tmp: Path, annotations: Path | None = None, *extra: str, images: Path | None = None):
    """``python -m diffdet.train`` arguments for a tiny run (never reached: every case fails first)."""
    annotations = annotations or write_coco(tmp, kit)
    return [
        *TRAIN_MODEL, f"data.train_images={images or kit.images}", f"data.train_annotations={annotations}",
        "data.val_annotations=", "data.min_size_train=[32]", "data.max_size_train=64", "data.num_workers=0",
        "solver.ims_per_batch=1", "solver.max_iter=1", "train.device=cpu", f"train.output_dir={tmp / 'run'}",
        *extra,
    ]  # fmt: skip


def odgt_with_long_image(kit: Kit, tmp: Path) -> list[str]:
    odgt = write_odgt(tmp, kit)
    long_image(tmp / "Images", "b.jpg")
    return eval_odgt(kit, odgt)


def resume_from_truncated(kit: Kit, tmp: Path) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    (run / "model_0000001.pth").write_bytes(kit.weights.read_bytes()[:1000])
    (run / "last_checkpoint").write_text("model_0000001.pth")
    return ["train", *training(kit, tmp), "--resume"]


T = "python -m diffdet.train"  # cases that start with a diffdet subcommand run as `diffdet ARGS`, the
COMMANDS = ("eval", "detect", "train", "bench", "evaluate")  # others as `python -m diffdet.train ARGS`
NAN, INF = float("nan"), float("inf")

CASES: list[tuple[str, Callable[[Kit, Path], list[str]], str]] = [
    # (id, the arguments made from (kit, tmp), a text stderr must hold: the file, line or option)
    # CrowdHuman odgt
    ("odgt not utf-8", lambda k, t: eval_odgt(k, write_odgt(t, k, raw=json.dumps(k.odgt_lines[0]).encode()
        + b'\n{"ID": "b\xff\xfe", "gtboxes": []}\n')), "annotation_val.odgt:2: not UTF-8"),
    ("odgt extra not an object",
        lambda k, t: eval_odgt(k, write_odgt(t, k, with_box(k, [1, 1, 4, 4], extra=5))),
        "annotation_val.odgt:2: a gtboxes entry's 'extra' must be an object"),
    ("odgt ID with NUL", lambda k, t: eval_odgt(k, write_odgt(t, k, [{"ID": "a\x00b", "gtboxes": []}])),
        "annotation_val.odgt:1: ID 'a\\x00b' is not a file name"),
    ("odgt negative width", lambda k, t: eval_odgt(k, write_odgt(t, k, with_box(k, [1, 1, -4, 4]))),
        "annotation_val.odgt:2: a gtboxes entry's 'vbox' has a negative width"),
    ("odgt NaN width", lambda k, t: eval_odgt(k, write_odgt(t, k, with_box(k, [1, 1, NAN, 4]))),
        "annotation_val.odgt:2: a gtboxes entry's 'vbox' must be 4 finite numbers"),
    ("odgt infinite height", lambda k, t: eval_odgt(k, write_odgt(t, k, with_box(k, [1, 1, 4, INF]))),
        "annotation_val.odgt:2: a gtboxes entry's 'vbox' must be 4 finite numbers"),
    ("odgt huge value", lambda k, t: eval_odgt(k, write_odgt(t, k, with_box(k, ["x" * 1_000_000, 1, 4, 4]))),
        "annotation_val.odgt:2"),
    ("odgt repeated ID", lambda k, t: eval_odgt(k, write_odgt(t, k, [k.odgt_lines[0], k.odgt_lines[0]])),
        "annotation_val.odgt:2: ID 'a' already on line 1"),
    ("odgt empty", lambda k, t: eval_odgt(k, write_odgt(t, k, raw=b"\n\n")),
        "annotation_val.odgt: the file holds no record"),
    ("odgt not JSON", lambda k, t: eval_odgt(k, write_odgt(t, k, ["{nope"])),
        "annotation_val.odgt:1: not valid JSON"),
    ("odgt image too elongated", odgt_with_long_image, "b.jpg (image id 1 of"),
    # COCO
    ("coco NaN width", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["annotations"][1]["bbox"]
        .__setitem__(2, NAN))), "instances.json: annotation 2 bbox must be 4 finite numbers"),
    ("coco negative height", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["annotations"][0]["bbox"]
        .__setitem__(3, -1))), "instances.json: annotation 1 has a negative width or height"),
    ("coco repeated image id", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["images"][1]
        .update(id=1))), "instances.json: images[1] repeats the id 1 of images[0]"),
    ("coco repeated annotation id", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["annotations"][1]
        .update(id=1))), "instances.json: annotations[1] repeats the id 1"),
    ("coco no image",
        lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d.update(images=[], annotations=[]))),
        "instances.json: the file holds no image"),
    ("coco height not a number", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["images"][0]
        .update(height="24"))), "instances.json: images[0] (id 1) height must be a positive"),
    ("coco string image id", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["images"][0]
        .update(id="1"))), "instances.json: images[0] needs an integer 'id'"),
    ("coco area NaN", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["annotations"][0]
        .update(area=NAN))), "instances.json: annotation 1 area must be a finite number"),
    ("coco not JSON", lambda k, t: eval_coco(k, write_coco(t, k, raw="{\"images\": [")),
        "instances.json: not valid JSON"),
    ("coco image too elongated", lambda k, t: eval_coco(k, write_coco(t, k, lambda d: d["images"][0]
        .update(height=20, width=20000))), "a.jpg (image id 1 of"),
    ("coco --images is a file", lambda k, t: eval_coco(k, write_coco(t, k), images=t / "instances.json"),
        "instances.json does not exist or is not a folder"),
    ("coco missing file", lambda k, t: eval_coco(k, t / "nope.json"), "nope.json does not exist"),
    # LVIS
    ("lvis NaN box", lambda k, t: eval_coco(k, write_lvis(t, k, lambda d: d["annotations"][0]["bbox"]
        .__setitem__(0, NAN))), "lvis_v1_val.json: annotation 1 bbox must be 4 finite"),
    ("lvis no frequency", lambda k, t: eval_coco(k, write_lvis(t, k, lambda d: d["categories"][0]
        .pop("frequency") and d["images"][0].pop("neg_category_ids"))), "lvis_v1_val.json"),
    # weights
    *[(f"weights {kind}", lambda k, t, kind=kind: eval_coco(k, write_coco(t, k), "--weights",
        str(bad_weights(kind, k, t))), "w.pth")
      for kind in ("truncated", "empty", "text", "pickle payload")],
    ("weights missing", lambda k, t: eval_coco(k, write_coco(t, k), "--weights", str(t / "nope.pth")),
        "nope.pth"),
    # options
    *[(f"eval {flag} {value[:10]}",
        lambda k, t, flag=flag, value=value: eval_coco(k, write_coco(t, k), flag, value),
        f"argument {flag}")
      for flag, value in (("--boxes", "-5"), ("--boxes", "0"), ("--steps", "0"), ("--steps", "-1"),
                          ("--batch-size", "0"), ("--max-images", "-1"), ("--boxes", "x" * 5000))],
    *[(f"detect {flag} {value}", lambda k, t, flag=flag, value=value: detect(k, t, flag, value),
        f"argument {flag}")
      for flag, value in (("--score-thr", "2"), ("--score-thr", "nan"), ("--score-thr", "-0.1"),
                          ("--boxes", "0"), ("--steps", "-1"))],
    ("eval unknown option", lambda k, t: eval_coco(k, write_coco(t, k), "--frobnicate"),
        "unrecognized arguments: --frobnicate"),
    ("eval without --weights", lambda k, t: ["eval", "--data", str(write_coco(t, k))],
        "the following arguments are required: --weights"),
    ("unknown command", lambda k, t: ["evaluate"], "invalid choice: 'evaluate'"),
    ("eval --results is --data", lambda k, t: eval_coco(k, write_coco(t, k), "--results",
        str(t / "instances.json")), "--results"),
    ("eval --device nonsense", lambda k, t: eval_coco(k, write_coco(t, k), "--device", "gpu9"),
        "--device gpu9"),
    ("detect --out is a file", lambda k, t: (t.joinpath("out").write_text("x"), detect(k, t))[1],
        "is a file, not a folder"),
    ("detect --out is the input folder", lambda k, t: detect(k, t, "--out", str(k.images)),
        "is (or is inside) the input folder"),
    ("detect --out inside the input folder", lambda k, t: detect(k, t, "--out", str(k.images / "sub")),
        "is (or is inside) the input folder"),
    ("detect --out is an image's folder", lambda k, t: detect(k, t, "--out", str(k.images),
        source=k.images / "a.jpg"), "is (or is inside) the input folder"),
    ("detect --out not empty", lambda k, t: ((t / "out").mkdir(), (t / "out" / "x.txt").write_text("x"),
        detect(k, t))[2], "the folder is not empty; pass --overwrite"),
    ("detect --out under a file", lambda k, t: (t.joinpath("f").write_text("x"),
        detect(k, t, "--out", str(t / "f" / "out")))[1], "cannot create a folder there"),
    ("bench --out is a file", lambda k, t: (t.joinpath("out").write_text("x"),
        ["bench", "--out", str(t / "out"), "--weights", str(k.weights)])[1], "--out"),
    ("bench --boxes 0", lambda k, t: ["bench", "--boxes", "0"], "argument --boxes"),
    ("bench --size 0x5", lambda k, t: ["bench", "--size", "0x5"], "argument --size"),
    ("bench unknown mode", lambda k, t: ["bench", "--weights", str(k.weights), "--modes", "fp64",
        "--out", str(t / "b")], "modes must be among"),
    ("bench unknown runtime", lambda k, t: ["bench", "--weights", str(k.weights), "--runtimes", "tvm",
        "--out", str(t / "b")], "--runtimes must be among"),
    ("bench graph mode on the CPU", lambda k, t: ["bench", "--weights", str(k.weights), "--modes",
        "graph", "--device", "cpu", "--out", str(t / "b")], "needs a CUDA device"),
    ("detect image too elongated", lambda k, t: detect(k, t, source=long_image(t / "in")),
        "long.jpg is 20x20000"),
    ("detect image not an image", lambda k, t: ((t / "in").mkdir(), (t / "in" / "x.jpg").write_text("no"),
        detect(k, t, source=t / "in"))[2], "x.jpg"),
    # training: configs
    (T + " config missing", lambda k, t: ["--config", str(t / "nope.yaml")], "nope.yaml"),
    (T + " config YAML error", lambda k, t: (t.joinpath("c.yaml").write_text("model: [1,\nsolver: {"),
        ["--config", str(t / "c.yaml")])[1], "c.yaml: not valid YAML"),
    (T + " config not a mapping", lambda k, t: (t.joinpath("c.yaml").write_text("- 1\n"),
        ["--config", str(t / "c.yaml")])[1], "c.yaml must hold a mapping"),
    (T + " config not utf-8", lambda k, t: (t.joinpath("c.yaml").write_bytes(b"model: \xff\n"),
        ["--config", str(t / "c.yaml")])[1], "c.yaml: not UTF-8"),
    (T + " config unknown key", lambda k, t: (t.joinpath("c.yaml").write_text("solver:\n  lr: 1\n"),
        ["--config", str(t / "c.yaml")])[1], "c.yaml: unknown config key 'solver.lr'"),
    (T + " unknown preset", lambda k, t: ["--config", "coco_r42"], "unknown preset 'coco_r42'"),
    (T + " max_iter=abc", lambda k, t: training(k, t, None, "solver.max_iter=abc"),
        "config key 'solver.max_iter' must be an integer, got 'abc'"),
    (T + " max_iter=0", lambda k, t: training(k, t, None, "solver.max_iter=0"),
        "solver max_iter must be >= 1"),
    (T + " unknown key", lambda k, t: training(k, t, None, "foo.bar=1"), "unknown config key 'foo.bar'"),
    (T + " override without =", lambda k, t: training(k, t, None, "solver.max_iter"),
        "override must look like key=value"),
    (T + " override not YAML", lambda k, t: training(k, t, None, "solver.steps=[1,"),
        "override solver.steps=[1,: not a YAML value"),
    (T + " model value refused", lambda k, t: training(k, t, None, "model.num_proposals=0"),
        "num_proposals"),
    (T + " num_classes mismatch", lambda k, t: training(k, t, None, "model.num_classes=3"),
        "model.num_classes is 3 but the training set has 1"),
    # training: data
    (T + " coco repeated image id", lambda k, t: training(k, t, write_coco(t, k, lambda d: d["images"][1]
        .update(id=1))), "instances.json: images[1] repeats the id 1"),
    (T + " coco NaN box", lambda k, t: training(k, t, write_coco(t, k, lambda d: d["annotations"][0]["bbox"]
        .__setitem__(3, NAN))), "instances.json: annotation 1 bbox"),
    (T + " odgt not utf-8", lambda k, t: training(k, t, write_odgt(t, k, raw=b'{"ID": "\xff"}\n'),
        images=t / "Images"), "annotation_val.odgt:1: not UTF-8"),
    (T + " odgt extra not an object", lambda k, t: training(k, t, write_odgt(t, k, with_box(k, [1, 1, 4, 4],
        extra=5)), images=t / "Images"), "annotation_val.odgt:2"),
    (T + " image too elongated", lambda k, t: training(k, t, write_coco(t, k, lambda d: d["images"][0]
        .update(height=20, width=20000))), "a.jpg (image id 1 of"),
    (T + " image missing, read in a loader worker", lambda k, t: training(k, t, write_coco(t, k,
        lambda d: d.update(images=[dict(d["images"][0], file_name="gone.jpg")], annotations=[])),
        "data.num_workers=1"), "image file not found: "),
    (T + " annotation file missing", lambda k, t: training(k, t, t / "nope.json"), "nope.json"),
    (T + " annotation_format unknown", lambda k, t: training(k, t, None, "data.annotation_format=xml"),
        "data.annotation_format must be one of"),
    # training: weights
    *[(f"{T} --weights {kind}", lambda k, t, kind=kind: [*training(k, t), "--weights",
        str(bad_weights(kind, k, t))], "w.pth")
      for kind in ("truncated", "empty", "text", "pickle payload")],
    (T + " --weights pkl payload",
        lambda k, t: [*training(k, t), "--weights", str(payload_pickle(t, "w.pkl"))],
        "w.pkl: refusing to unpickle global posix.system"),
    (T + " --resume truncated", resume_from_truncated, "model_0000001.pth"),
]  # fmt: skip


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``diffdet ARGV`` (``python -m diffdet.train ARGV[1:]`` when ARGV[0] is T) in-process."""
    status = train.main(argv[1:]) if argv[0] == T else main(argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(("make_args", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_status_2(kit, tmp_path, capsys, monkeypatch, make_args, named):
    monkeypatch.chdir(tmp_path)  # a payload that ran would leave PWNED here
    argv = make_args(kit, tmp_path)
    if argv[0] not in COMMANDS:
        argv = [T, *argv]
    before = digest(kit.root, tmp_path)
    status, stderr = run(argv, capsys)
    assert status == 2, stderr
    lines = [line for line in stderr.split("\n") if line and "\r" not in line]  # progress bars aside
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert ": error: " in lines[0] and named in lines[0], stderr
    assert len(lines[0]) < 500, f"{len(lines[0])} characters"
    after = digest(kit.root, tmp_path)
    assert {p: after.get(p) for p in before} == before, "an input file changed"
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out" / "detections.json").exists()


def test_the_error_names_the_command(kit, tmp_path, capsys):
    status, stderr = run(["eval", "--data", str(tmp_path / "nope.json"), "--weights", "w"], capsys)
    assert status == 2 and stderr.startswith("diffdet eval: error: ")
    status, stderr = run([T, "--config", str(tmp_path / "nope.yaml")], capsys)
    assert status == 2 and stderr.startswith("python -m diffdet.train: error: ")
    status, stderr = run(["eval", "--boxes", "0"], capsys)
    assert status == 2 and stderr.startswith("diffdet eval: error: argument --boxes")


def test_a_bug_keeps_its_traceback(kit, tmp_path, monkeypatch):
    """Only bad input becomes one line: an unexpected exception propagates (exit status 1 in a shell)."""
    import diffdet.cli.eval

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(diffdet.cli.eval, "run_eval", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(eval_coco(kit, write_coco(tmp_path, kit)))


# -- the output folder of diffdet detect --------------------------------------------------------------


def test_detect_replaces_out_only_when_a_run_succeeds(kit, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (source / name).write_bytes((kit.images / name).read_bytes())
    inputs = digest(source)
    assert run(detect(kit, tmp_path, "--score-thr", "0", source=source), capsys)[0] == 0
    first = digest(tmp_path / "out")
    assert {p.name for p in first} == {"a.jpg", "b.jpg", "detections.json"}

    (source / "c.jpg").write_text("not an image")  # the third image fails after two were drawn
    status, stderr = run(detect(kit, tmp_path, "--overwrite", "--seed", "1", source=source), capsys)
    assert status == 2 and "c.jpg" in stderr
    assert digest(tmp_path / "out") == first, "a failed run must leave the earlier output whole"

    (source / "c.jpg").unlink()
    (tmp_path / "out" / "stale.txt").write_text("from an older run")
    assert run(detect(kit, tmp_path, "--overwrite", "--score-thr", "1", source=source), capsys)[0] == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"a.jpg", "b.jpg", "detections.json"}
    assert json.loads((tmp_path / "out" / "detections.json").read_text()) == []
    assert digest(source) == inputs
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "staging folders left"


# -- the real exit status ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["-m", "diffdet", "detect", "in", "--weights", "nope.pth", "--device", "cpu"],
     ["-m", "diffdet.train", "--config", "nope.yaml"]],
    ids=["diffdet", "python -m diffdet.train"],
)  # fmt: skip
def test_exit_status_in_a_shell(tmp_path, argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_the_commands_in_docs_errors_md_parse():
    from diffdet.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("diffdet detect ")]
    assert commands
    for command in commands:
        args = build_parser().parse_args(command.split()[1:])
        assert args.command == "detect" and args.overwrite
