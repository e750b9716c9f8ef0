"""The trainer's tests (tests/trainer_tests) run here, in a python where only torch, torchvision and what comes
with them can be imported: the engine and deploy layers, and their tests, must work on a GPU box that has no
optuna, mlflow or torchao. tests/conftest.py leaves the folder out of this session's own collection, so each
trainer test runs once, in that process; `python -m pytest tests/trainer_tests` still runs them directly.
"""

from __future__ import annotations

import re
import subprocess
import sys

from .support import REPO, TORCH_ALONE

# The only reasons a trainer test may skip: the machine, never a missing package.
MACHINE_SKIPS = ("needs CUDA", "needs two GPUs")


def test_the_trainer_tests_pass_with_torch_alone(request):
    # In this one process (-o addopts= drops the project's -n 2): the preamble must hold for every test, and a GPU
    # machine has no pytest-xdist.
    args = ["-q", "-o", "addopts=", "--strict-markers", "-p", "no:cacheprovider", "-rs", "tests/trainer_tests"]
    if request.config.option.markexpr:  # the fast tier's -m "not slow" reaches them too
        args += ["-m", request.config.option.markexpr]
    pytest_main = TORCH_ALONE + "import pytest\nsys.exit(pytest.main(sys.argv[1:]))\n"
    proc = subprocess.run([sys.executable, "-c", pytest_main, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert all(any(reason in line for reason in MACHINE_SKIPS) for line in skips), "\n".join(skips)


def test_the_preamble_hides_what_a_gpu_box_lacks():
    for module in ("optuna", "mlflow", "torchao", "yaml"):
        absent = subprocess.run([sys.executable, "-c", f"{TORCH_ALONE}import {module}\n"], capture_output=True,
                                text=True, timeout=60)
        assert f"No module named '{module}'" in absent.stderr
