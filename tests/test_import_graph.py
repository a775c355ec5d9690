"""The package's layering, read from its import graph (DESIGN.md: data flows one way, no circles).

Every ``import`` in ``diffdet/`` and ``kernels/`` counts, lazy ones inside functions included; only
imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Module name -> file, for the package as it installs (``kernels/`` is ``diffdet.kernels``)."""
    found = {}
    for top, prefix in ((ROOT / "diffdet", "diffdet"), (ROOT / "kernels", "diffdet.kernels")):
        for path in top.rglob("*.py"):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


EXTENSIONS = {"diffdet._C"}  # compiled modules: they import nothing from the package


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that execute: everything but the bodies of ``if TYPE_CHECKING:``."""
    out = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                named = [f"{base}.{a.name}" for a in node.names]
                targets = [t if t in modules or t in EXTENSIONS else base for t in named]
            for target in targets:
                if target in EXTENSIONS:
                    continue
                while target and target not in modules:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_lazy_imports():
    graph = _graph()
    assert "diffdet.checkpoint" in graph["diffdet"]  # `diffdet.load` imports it inside a function
    assert "diffdet.cli.quickstart" not in graph["diffdet.cli"]  # ... and that one only by name


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_command_line_imports_it():
    offenders = {
        (name, target)
        for name, targets in _graph().items()
        for target in targets
        if target.startswith("diffdet.cli")
        and not name.startswith("diffdet.cli")
        and name not in ("diffdet.__main__", "diffdet.train")  # `python -m` entry points: command lines
    }
    assert offenders == set()


def test_no_scoring_code_at_the_top_of_the_package():
    top = {p.stem for p in (ROOT / "diffdet").glob("*.py")}
    assert not top & {
        "evaluate",
        "evaluate_lvis",
        "crowdhuman_eval",
        "crowdhuman_cli",
        "detect",
        "quickstart",
    }


def test_every_package_folder_has_an_init():
    """A folder of modules without ``__init__.py`` is a namespace package: setuptools' package discovery
    leaves it out of the wheel."""
    folders = {p.parent for p in (ROOT / "diffdet").rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []
