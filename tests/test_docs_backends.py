"""docs/backends.md: its command and its Python example run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from diffdet.hardware import bf16_emulation_message
from diffdet.ops._backend import forced_backend, published_mode

PAGE = Path(__file__).resolve().parents[1] / "docs" / "backends.md"


def _blocks(language: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"```{language}\n(.*?)\n```", PAGE.read_text(), flags=re.S)]


def test_the_bash_command_reports_the_published_backend():
    (command,) = _blocks("bash")
    *assignments, python, module, name, subcommand = shlex.split(command)
    assert (python, module, name, subcommand) == ("python", "-m", "diffdet", "info")
    env = dict(os.environ, **dict(a.split("=", 1) for a in assignments))
    out = subprocess.run(
        [sys.executable, "-m", "diffdet", "info"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "DIFFDET_BACKEND=published" in out.splitlines()


def test_the_python_example_runs_and_leaves_the_env_var_in_charge(monkeypatch):
    monkeypatch.delenv("DIFFDET_BACKEND", raising=False)
    (example,) = _blocks("python")
    seen = []
    body = example.replace("    pass", "    seen.append((forced_backend(), published_mode()))")
    exec(body, {"seen": seen, "forced_backend": forced_backend, "published_mode": published_mode})
    assert seen == [(None, False)]
    assert forced_backend() is None


def test_the_quoted_warning_is_the_one_emitted(monkeypatch):
    import diffdet.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_isa", lambda: "AVX2")
    assert f"diffdet: warning: {bf16_emulation_message()}" in PAGE.read_text()
