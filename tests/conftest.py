"""Shared fixtures: every test runs in its own folder, so `studies/` and `mlruns/` are its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpsearch.synthetic import write_image_folder

REPO = Path(__file__).resolve().parents[1]

# A search that trains for real but fits in seconds on two CPU cores: digits at 16 px.
TINY_SPACE = {
    "study": {
        "name": "tiny",
        "metric": "val_accuracy",
        "direction": "maximize",
        "n_trials": 3,
        "sampler": {"name": "random", "seed": 7},
        "pruner": {"name": "none"},
    },
    "task": {
        "model": {"name": "shufflenet_v2_x0_5", "weights": "none"},
        "data": {"name": "digits", "image_size": 32, "val_fraction": 0.2, "augment": "none"},
    },
    "train": {"epochs": 2, "batch_size": 64, "optimizer": "adamw"},
    "search_space": {
        "lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
    "resources": {"devices": "cpu", "trials_per_device": 1},
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh project folder as the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.fixture
def write_space(workdir):
    def write(override: dict | None = None, name: str = "tiny.yaml", drop: tuple[str, ...] = ()) -> Path:
        data = merge(TINY_SPACE, override or {})
        for key in drop:
            data.pop(key, None)
        path = workdir / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m hpsearch ARGS` in a real subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def image_folder():
    """write(root, layout, classes, train_per_class, test_per_class, size=32) → root."""
    return write_image_folder
