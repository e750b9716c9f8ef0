"""benchmarks/gpu_check.py, on the CPU: a part's result is pytest's own counts and the page goes to $OUT (that
the trainer tests it runs pass with torch alone is test_trainer_torch_alone's)."""

from __future__ import annotations

import importlib.util
import signal
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
