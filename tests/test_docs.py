"""The README and docs/ say only what works.

Every ``diffdet``, ``python -m diffdet[.train]`` and ``torchrun ... -m diffdet.train`` command in a
```bash block goes through the real argparse parser (and its configs, overrides and presets through the
real config loader); the cheap ones (``diffdet info``, ``diffdet detect``) run, against a tiny random
detector saved under every preset's file name; the README's python block runs the same way; every
relative link points to an existing file; the README's headline speed ratios are the performance page's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdet.checkpoint import save_checkpoint
from diffdet.checkpoint.presets import PRESETS
from diffdet.cli import build_parser, main
from diffdet.config import load_config
from diffdet.modeling.build import build_detector
from diffdet.modeling.config import ModelConfig
from diffdet.train import _config_path
from diffdet.train import add_arguments as add_train_arguments

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATORS = {"&&", "||", ";", "|"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TINY = dict(
    backbone="R18", hidden_dim=32, dim_feedforward=64, nheads=2, num_heads=2, dim_dynamic=8,
    num_proposals=10, min_size_test=64, max_size_test=96,
)  # fmt: skip
"""A detector small enough for a 2-core CPU, with COCO's 80 classes."""


def code_blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def shell_commands(block: str) -> list[list[str]]:
    """Each simple command of a bash block as argv, leading ``VAR=value`` assignments kept."""
    commands: list[list[str]] = [[]]
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        for token in lexer:
            if token in SEPARATORS:
                commands.append([])
            else:
                commands[-1].append(token)
        commands.append([])
    return [c for c in commands if c]


def diffdet_invocation(argv: list[str]) -> tuple[str, list[str], dict[str, str]] | None:
    """("cli" | "train", its arguments, its environment) for a diffdet command, else None."""
    env = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        key, value = argv[0].split("=", 1)
        env[key] = value
        argv = argv[1:]
    if argv and argv[0] == "srun":  # SLURM's launcher: the command follows its options
        programs = [i for i, token in enumerate(argv) if token in ("diffdet", "python", "python3")]
        argv = argv[programs[0] :] if programs else []
    if not argv:
        return None
    if argv[0] == "diffdet":
        return "cli", argv[1:], env
    if argv[0] in ("python", "python3", "torchrun") and "-m" in argv:
        at = argv.index("-m")
        module, rest = argv[at + 1], argv[at + 2 :]
        if module == "diffdet":
            return "cli", rest, env
        if module == "diffdet.train":
            return "train", rest, env
    return None


def documented_commands() -> list[tuple[str, str, list[str], dict[str, str]]]:
    found = []
    for page in PAGES:
        for block in code_blocks(page, "bash"):
            for argv in shell_commands(block):
                invocation = diffdet_invocation(argv)
                if invocation is not None:
                    found.append((page.relative_to(ROOT).as_posix(), *invocation))
    return found


COMMANDS = documented_commands()


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffdet.train")
    add_train_arguments(parser)
    return parser


def parse(kind: str, args: list[str]) -> argparse.Namespace:
    parser = build_parser() if kind == "cli" else train_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(args)
    except SystemExit as exit_:
        if exit_.code == 0:  # --help
            return argparse.Namespace(command="help")
        pytest.fail(f"argparse refuses {args}: {err.getvalue().strip()}")


def check_config(config: str | None, overrides: list[str]) -> None:
    """The config (file or preset) exists and every ``key=value`` names a field of the right type."""
    if config is not None and (ROOT / config).is_file():
        config = str(ROOT / config)
    load_config(_config_path(config), overrides)


def check_weights(weights: str | None) -> None:
    """A ``--weights`` that is not a path (no folder, no suffix) must be a preset."""
    if weights and "/" not in weights and "." not in weights:
        assert weights in PRESETS, f"--weights {weights} is neither a path nor a preset ({sorted(PRESETS)})"


def test_the_docs_hold_the_commands_this_file_checks():
    kinds = {(args[0] if kind == "cli" and args else kind) for _, kind, args, _ in COMMANDS}
    assert {"quickstart", "detect", "eval", "bench", "info", "train"} <= kinds, kinds


def command_id(page: str, args: list[str], env: dict[str, str]) -> str:
    return f"{page}:{' '.join([*(f'{k}={v}' for k, v in env.items()), *args])[:70]}"


@pytest.mark.parametrize(
    "page, kind, args, env", COMMANDS, ids=[command_id(p, a, e) for p, _, a, e in COMMANDS]
)
def test_documented_command_parses(page, kind, args, env):
    namespace = parse(kind, args)
    command = "train" if kind == "train" else namespace.command
    if command == "train":
        overrides = [*namespace.overrides]
        if namespace.output_dir:
            overrides.append(f"train.output_dir={namespace.output_dir}")
        check_config(namespace.config, overrides)
    elif command == "bench" and not namespace.weights:
        check_config(namespace.config, namespace.overrides)
    check_weights(getattr(namespace, "weights", None))
    if "DIFFDET_BACKEND" in env:
        assert env["DIFFDET_BACKEND"] in ("reference", "compiled", "triton", "published")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A folder holding a tiny random detector under every preset's file name (``DIFFDET_WEIGHTS_DIR``)."""
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    folder = tmp_path_factory.mktemp("weights")
    first = save_checkpoint(folder / "tiny.pth", build_detector(cfg), cfg)
    for preset in PRESETS.values():
        (folder / preset.filename).hardlink_to(first)
    return folder


@pytest.fixture
def sandbox(tmp_path, tiny_weights, monkeypatch, one_thread) -> Path:
    """A working folder in which presets resolve to the tiny detector."""
    monkeypatch.setenv("DIFFDET_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def is_cheap(kind: str, args: list[str]) -> bool:
    """``diffdet info``, and ``diffdet detect`` on an image or a folder (the test makes a tiny one)."""
    if kind != "cli" or not args or args[0] not in ("info", "detect"):
        return False
    if args[0] == "info":
        return True
    with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        suffix = Path(build_parser().parse_args(args).input).suffix.lower()
        return suffix in ("", *IMAGE_SUFFIXES)
    return False  # unparsable: test_documented_command_parses reports it


CHEAP = [(p, a, e) for p, kind, a, e in COMMANDS if is_cheap(kind, a)]


@pytest.mark.parametrize("page, args, env", CHEAP, ids=[command_id(p, a, e) for p, a, e in CHEAP])
def test_cheap_documented_command_runs(page, args, env, sandbox, tiny_weights, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    namespace = parse("cli", args)
    if namespace.command == "detect":
        target = Path(namespace.input)
        write_image(target if target.suffix.lower() in IMAGE_SUFFIXES else target / "000000000009.jpg")
        if Path(namespace.weights).suffix.lower() in (".onnx", ".pt2"):  # an exported tiny detector
            import diffdet

            diffdet.export(diffdet.load(str(tiny_weights / "tiny.pth")), namespace.weights)
        elif namespace.weights not in PRESETS:
            Path(namespace.weights).parent.mkdir(parents=True, exist_ok=True)
            Path(namespace.weights).hardlink_to(tiny_weights / "tiny.pth")
        args = [*args, "--no-progress"]
    status, stdout, stderr = run_cli(args)
    assert status == 0, stderr
    if namespace.command == "detect":
        assert (Path(namespace.out) / "detections.json").is_file()
    else:
        assert "roi_align_multilevel" in stdout


def test_readme_python_example_runs(sandbox):
    (block,) = code_blocks(ROOT / "README.md", "python")
    for name in re.findall(r"[\"']([\w./-]+)[\"']", block):
        if name.lower().endswith(IMAGE_SUFFIXES):
            write_image(sandbox / name)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(block, "README.md", "exec"), namespace)
    det = namespace["det"]
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) > 0
    assert len(out.getvalue().splitlines()) == int((det["scores"] >= 0.5).sum())


def relative_links(page: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(page):
    for target in relative_links(page):
        assert "#" not in target, f"{page.name}: link {target} has an anchor (pages are short: link the page)"
        assert (page.parent / target).is_file(), f"{page.name}: link {target} points to no file"


def test_every_docs_page_is_linked_from_the_index():
    index = (ROOT / "docs" / "index.md").read_text()
    for page in PAGES[1:]:
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not link {page.name}"


def test_readme_headline_ratios_are_the_performance_pages():
    ratios = re.findall(r"\b\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?x\b", (ROOT / "README.md").read_text())
    performance = (ROOT / "docs" / "performance.md").read_text()
    assert ratios
    for ratio in ratios:
        assert ratio in performance, f"README's {ratio} is not in docs/performance.md"
