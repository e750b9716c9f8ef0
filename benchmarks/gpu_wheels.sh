#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs on the GPU machine beyond what it has (Python 3.12, torch, torchvision,
# pytest, click, rich, pyyaml, scikit-learn, numpy): optuna and mlflow-skinny with their dependencies, for the
# `parallel` and `run` parts. Downloaded here (a machine with PyPI) into .whl/ (git-ignored), ~25 MB, carried
# to the device with the run tool's carry=[".whl"] (64 MiB limit); gpu_check.py unpacks them there (no pip).
#
#   bash benchmarks/gpu_wheels.sh            # PYTHON=... to use another pip (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
# The versions the project is developed with (the venv's), so the device runs what CI ran.
OPTUNA=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("optuna"))')
MLFLOW=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("mlflow"))')
PANDAS=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("pandas"))')
rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip download --quiet --dest .whl --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any \
    "optuna==$OPTUNA" "mlflow-skinny==$MLFLOW" "pandas==$PANDAS" 2>&1 | grep -v "is ignored" || true
# The GPU machine has its own numpy (torch and torchvision were built against it): never shadow it.
rm -f .whl/numpy-*.whl
ls .whl/*.whl > /dev/null  # fails loudly when nothing was downloaded
du -sh .whl
