"""benchmarks/gpu_check.py, on the CPU: a part's result is pytest's own counts, the page goes to $OUT, and the
trainer tests it runs collect on a GPU box that has torch, torchvision and pytest alone."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ is no package: load the script as a module (registered first, as its dataclasses need).
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
assert spec is not None
assert spec.loader is not None
gpu_check = sys.modules.setdefault("gpu_check", importlib.util.module_from_spec(spec))
spec.loader.exec_module(gpu_check)

# What the probe would report on a GPU box, without importing torch here (the real probe takes seconds).
INFO = {"torch": "2.11.0", "cuda_build": None, "python": "3.12.0", "cuda": False, "torchvision": "0.26.0"}
FAKE_PROBE = f"import json; print(json.dumps({INFO!r}))"

PASSING = """
def test_one():
    assert 1 + 1 == 2
"""
FAILING = """
def test_one():
    pass

def test_two():
    assert False, "boom"
"""
# The old rule read any missing-module text in the output as "not installed, skipped".
FAILING_MENTIONING_A_MODULE = """
def test_one():
    print("ModuleNotFoundError: No module named 'torchao'")
    assert False
"""
ERRORING = """
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_one(broken):
    pass
"""
COLLECTION_ABORTS = """
import nosuchmodule_for_gpu_check

def test_one():
    pass
"""


@pytest.fixture
def check(tmp_path, monkeypatch):
    """Run gpu_check's main on the CPU with its tests part on a generated test file: (exit code, the page)."""
    monkeypatch.setattr(gpu_check, "PROBE", FAKE_PROBE)
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    handler = signal.getsignal(signal.SIGTERM)

    def run(source: str, conftest: str = "") -> tuple[int, str]:
        test_file = tmp_path / "cases" / "test_case.py"
        test_file.parent.mkdir(exist_ok=True)
        test_file.write_text(textwrap.dedent(source))
        (test_file.parent / "conftest.py").write_text(conftest)
        try:
            code = gpu_check.main(["--allow-cpu", "--parts", "tests", "--tests", str(test_file),
                                   "--wheels", str(tmp_path / "no-wheels"), "--tests-budget", "60"])
        finally:
            signal.signal(signal.SIGTERM, handler)
        return code, (out / "gpu-check.md").read_text()  # under $OUT, the folder that comes back

    return run


@pytest.mark.parametrize(("source", "code", "status"), [
    (PASSING, 0, "passed: 1 passed, 0 failed, 0 errors, 0 skipped"),
    (FAILING, 1, "failed: 1 passed, 1 failed, 0 errors, 0 skipped"),
    (FAILING_MENTIONING_A_MODULE, 1, "failed: 0 passed, 1 failed, 0 errors, 0 skipped"),
    (ERRORING, 1, "failed: 0 passed, 0 failed, 1 errors, 0 skipped"),
    (COLLECTION_ABORTS, 1, "skipped: collection aborted: test_case: ModuleNotFoundError: No module named "
                           "'nosuchmodule_for_gpu_check'"),
], ids=["passing", "failing", "failing-mentioning-a-module", "erroring", "collection-aborts"])
def test_the_tests_part_is_what_pytest_counted(check, source, code, status):
    got, page = check(source)
    assert got == code
    assert f"| CUDA tests (pytest) | {status} |" in page
    assert ("## Failures\n\nNone." in page) == (code == 0)


def test_a_conftest_that_cannot_be_imported_aborts_collection(check):
    code, page = check(PASSING, conftest="import nosuchmodule_for_gpu_check\n")  # pytest writes no report then
    assert code == 1
    assert "| skipped: collection aborted: ModuleNotFoundError: No module named 'nosuchmodule_for_gpu_check' |" in page


def test_a_failing_test_is_named_on_the_page(check):
    _, page = check(FAILING)
    assert "- `test_case::test_two`" in page


def test_without_out_the_page_goes_to_docs(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.default_out() == REPO / "docs/gpu-check-results.md"
    monkeypatch.setenv("OUT", "/somewhere")
    assert gpu_check.default_out() == Path("/somewhere/gpu-check.md")


def test_the_default_budgets_leave_a_rerun_in_the_device_time():
    total = sum(gpu_check.BUDGETS.values()) + gpu_check.GRACE_S * len(gpu_check.BUDGETS)
    assert total <= 345  # 6 minutes with the probe and the wheels' unpacking
    assert list(gpu_check.BUDGETS)[0] == gpu_check.PARTS[0] == "tests"  # the CUDA tests first


# A GPU box's python: no optuna, mlflow, torchao (nor what the rest of hpsearch uses); the finder that reads
# sys.path says they are not there, as for a module never installed.
TORCH_ALONE = """
import importlib.machinery
import sys
ABSENT = {"optuna", "mlflow", "torchao", "yaml", "sklearn", "click", "rich", "sqlalchemy", "alembic", "psycopg",
          "pandas"}

class Absent(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in ABSENT else super().find_spec(name, path, target)

sys.meta_path[:] = [Absent if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def test_the_trainer_tests_collect_with_torch_alone():
    """Collection imports every trainer test module, its conftests and what they import from hpsearch; the tests
    that need optuna, mlflow, torchao, pyyaml or scikit-learn skip themselves when they run."""
    pytest_main = TORCH_ALONE + "import pytest\nsys.exit(pytest.main(sys.argv[1:]))\n"
    proc = subprocess.run([sys.executable, "-c", pytest_main, "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/trainer_tests"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
    absent = subprocess.run([sys.executable, "-c", TORCH_ALONE + "import optuna\n"], capture_output=True, text=True,
                            timeout=60)
    assert "No module named 'optuna'" in absent.stderr  # the finder hides them
