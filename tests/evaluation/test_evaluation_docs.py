"""Every command of docs/evaluation.md parses with the real parsers (torchrun's, then diffdet's; srun's
``python -m diffdet`` tail), and its Python example uses names the package has."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def _commands() -> list[list[str]]:
    """The shell commands of the bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)\n```", DOC.read_text(), flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_every_documented_command_parses():
    from torch.distributed.run import get_args_parser

    from diffdet.checkpoint import PRESETS
    from diffdet.cli import build_parser

    commands = _commands()
    assert {argv[0] for argv in commands} == {"diffdet", "torchrun", "srun"}
    for argv in commands:
        if argv[0] == "srun":
            assert argv[1:4] == ["python", "-m", "diffdet"], argv
            argv = argv[3:]
        if argv[0] == "torchrun":
            launch = get_args_parser().parse_args(argv[1:])
            assert launch.module and launch.training_script == "diffdet", argv
            argv = ["diffdet", *launch.training_script_args]
        args = build_parser().parse_args(argv[1:])
        assert args.command == "eval", argv
        assert args.weights in PRESETS or args.weights.endswith(".pth"), argv


def test_the_python_example_names_what_the_package_has():
    (example,) = re.findall(r"```python\n(.*?)\n```", DOC.read_text(), flags=re.S)
    for node in ast.walk(ast.parse(example)):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            assert all(hasattr(module, alias.name) for alias in node.names), node.module
