"""The package's layering: no import cycle, the trainer needs torch alone, the spec and shipped spaces need no torch."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hpsearch"
SHIPPED_SPACES = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("spaces/*.yaml"), *ROOT.glob("examples/*.yaml")])
WITHOUT_TORCH = ("torch", "torchvision", "mlflow")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The hpsearch modules `path` imports anywhere (in functions too), except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hpsearch"):
            # `from hpsearch.storage import stores` names a module; `from hpsearch.storage.stores import x` one too
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (ROOT / (sub.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hpsearch."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {_module(path)}


def test_no_module_imports_itself_through_others():
    graph = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py") if p.stem not in ("__main__", "__init__")}
    assert len(graph) > 60
    assert "hpsearch.engine.train" in graph

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


def test_the_folders_are_the_layers():
    """Every module sits in one of the layer folders; nothing is left flat beside them."""
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert flat == []
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == [
        "cli", "core", "deploy", "engine", "orchestration", "reporting", "results", "search", "spec", "storage",
        "tracking"]


@pytest.mark.parametrize(("module", "injected", "broken"), [
    ("engine/train.py", "import click", ("Only the command line talks to the terminal", "The trainer needs torch")),
    ("engine/train.py", "import optuna", ("The trainer needs torch alone",)),
    ("spec/study_spec.py", "import torch", ("A space file parses without torch",)),
    ("storage/stores.py", "import hpsearch.tracking.study_runs", ("Layers",)),
    ("orchestration/runner.py", "from hpsearch.cli import live", ("Layers", "Only the command line")),
    ("core/checks.py", "import yaml", ("The vocabulary depends on no framework",)),
], ids=["engine-click", "engine-optuna", "spec-torch", "storage-tracking", "orchestration-cli", "core-yaml"])
def test_the_import_contracts_fail_when_a_layer_leaks(tmp_path, module, injected, broken):
    """CI runs `lint-imports`: a copy of the package with one leaking import breaks exactly that contract."""
    shutil.copytree(PACKAGE, tmp_path / "hpsearch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "hpsearch" / module
    target.write_text(target.read_text() + f"\n{injected}  # leaked\n")
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stdout
    broken_lines = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert len(broken_lines) == len(broken), result.stdout
    assert all(line.startswith(name) for line, name in zip(broken_lines, broken, strict=True)), result.stdout


def _run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (in the repository) where the `blocked` packages cannot be imported."""
    code = f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n{code}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


def _import_without(blocked: tuple[str, ...], modules: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import `modules` in a fresh interpreter where the `blocked` packages cannot be imported."""
    return _run_without(blocked, f"for name in {modules!r}: __import__(name)\n")


@pytest.mark.parametrize(("blocked", "modules"), [
    # GPU boxes may carry torch alone: the trainer and what it reads import nothing else of hpsearch's.
    (("optuna", "mlflow", "yaml", "click", "rich", "sqlalchemy"),
     ("hpsearch.engine.data", "hpsearch.engine.models", "hpsearch.engine.train", "hpsearch.core.data_config",
      "hpsearch.core.hparams")),
    # The spec imports without torch or Optuna (Optuna is loaded to check and build a sampler, not to import).
    ((*WITHOUT_TORCH, "optuna"), ("hpsearch.spec.study_spec", "hpsearch.core.data_config",
                                  "hpsearch.search.components", "hpsearch.spec.model_catalog")),
], ids=["trainer-torch-only", "spec-torch-free"])
def test_layers_import_only_what_they_need(blocked, modules):
    result = _import_without(blocked, modules)
    assert result.returncode == 0, result.stderr


def test_every_shipped_space_validates_without_torch():
    """load_spec and `hpsearch validate` of each shipped space, torch, torchvision and mlflow unimportable."""
    code = (
        "from hpsearch.cli.main import cli\n"
        "from hpsearch.spec.study_spec import load_spec\n"
        f"for path in {SHIPPED_SPACES!r}:\n"
        "    load_spec(path)\n"
        "    cli(['validate', path], standalone_mode=False)\n"
    )
    result = _run_without(WITHOUT_TORCH, code)
    assert result.returncode == 0, result.stderr
    assert len(SHIPPED_SPACES) >= 7
    assert [line for line in result.stdout.splitlines() if line.endswith(": valid")] == [
        f"# {path}: valid" for path in SHIPPED_SPACES
    ]


@pytest.mark.parametrize(("model", "refusal"), [
    ({"name": "mobilenet_v9"}, "task.model.name: unknown model 'mobilenet_v9' (did you mean 'mobilenet_v2'?)"),
    ({"name": "mobilenet_v2", "weights": "IMAGENET9K"},
     "task.model.weights: mobilenet_v2 has no weights 'IMAGENET9K' "
     "(valid: none, IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, or a path to a state_dict file)"),
], ids=["model-name", "weights-name"])
@pytest.mark.parametrize("blocked", [WITHOUT_TORCH, ()], ids=["without-torch", "with-torch"])
def test_model_refusals_are_the_same_without_torch(model, refusal, blocked):
    code = (
        "import yaml\n"
        "from hpsearch.spec.study_spec import SpecError, parse_spec\n"
        "data = yaml.safe_load(open('spaces/quickstart.yaml'))\n"
        f"data['task']['model'] = {model!r}\n"
        "try:\n"
        "    parse_spec(data)\n"
        "except SpecError as e:\n"
        "    print(e)\n"
    )
    result = _run_without(blocked, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == refusal


def test_model_catalog_is_what_the_installed_torchvision_lists():
    """The checked-in table equals the installed torchvision's models, weights and stages (regenerate it with
    `python -m hpsearch.spec.model_catalog --write` when this fails after a torchvision upgrade)."""
    from hpsearch.spec import model_catalog

    assert model_catalog.generate() == model_catalog.CATALOG


def test_a_model_the_catalog_lacks_is_asked_of_torchvision(monkeypatch):
    """A newer torchvision's model is accepted, and its weights and stages read, though the table lacks it."""
    from hpsearch.spec import model_catalog

    entry = model_catalog.CATALOG["mobilenet_v2"]
    monkeypatch.delitem(model_catalog.CATALOG, "mobilenet_v2")
    assert model_catalog.is_model("mobilenet_v2")
    assert model_catalog.weights("mobilenet_v2") == (entry.weights_enum, entry.weights)
    assert model_catalog.stages("mobilenet_v2") == entry.stages
    assert not model_catalog.is_model("mobilenet_v9")
