"""The package's layering: no import cycle, the trainer needs torch alone, the spec needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"


def _imports(path: Path) -> set[str]:
    """The hpsearch modules `path` imports anywhere (in functions too), except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module == "hpsearch":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hpsearch."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("hpsearch."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {path.stem}


def test_no_module_imports_itself_through_others():
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__main__"}

    def cycle_from(start: str) -> list[str] | None:
        trail, todo = {start: [start]}, [start]
        while todo:
            here = todo.pop()
            for there in graph.get(here, ()):
                if there == start:
                    return [*trail[here], start]
                if there not in trail:
                    trail[there] = [*trail[here], there]
                    todo.append(there)
        return None

    cycles = [" → ".join(c) for m in sorted(graph) if (c := cycle_from(m))]
    assert cycles == []


def _import_without(blocked: tuple[str, ...], modules: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import `modules` in a fresh interpreter where the `blocked` packages cannot be imported."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        f"for name in {modules!r}: __import__(name)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("blocked, modules", [
    # GPU boxes may carry torch alone: the trainer and what it reads import nothing else of hpsearch's.
    (("optuna", "mlflow", "yaml", "click", "rich", "sqlalchemy"),
     ("hpsearch.data", "hpsearch.models", "hpsearch.train", "hpsearch.config", "hpsearch.params")),
    # The spec validates without torch (only a model name or weights name loads torchvision).
    (("torch", "torchvision", "mlflow"), ("hpsearch.spec", "hpsearch.config", "hpsearch.registry")),
], ids=["trainer-torch-only", "spec-torch-free"])
def test_layers_import_only_what_they_need(blocked, modules):
    result = _import_without(blocked, modules)
    assert result.returncode == 0, result.stderr
