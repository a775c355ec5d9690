"""The README's two commands exist, and CI runs the test command exactly as the README states it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_quickstart_and_test_commands():
    quickstart, tests = _readme_commands()
    assert quickstart.endswith("diffdet quickstart")
    assert "pip install --no-build-isolation -e ." in quickstart
    assert '-e ".[test]"' in tests and tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    _, readme_tests = _readme_commands()
    install, pytest_cmd = readme_tests.rsplit(" && ", 1)
    ci = (ROOT / ".ci" / "run").read_text()
    ci_install = " && ".join(
        line.strip() for line in ci.splitlines() if line.startswith(("python3 -m venv", "pip install torch"))
    )
    assert ci_install == install
    assert pytest_cmd in ci
