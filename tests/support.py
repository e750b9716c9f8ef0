"""Helpers shared by test modules: import them (`from .support import run_cli`), never from conftest.

conftest.py holds the fixtures, which pytest injects; what a test module imports by name lives here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m hpsearch ARGS` in a real subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def wait_for(predicate, timeout: float, what: str):
    """predicate()'s first truthy value, polled until `timeout` seconds have passed (then fail naming `what`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A GPU box's python (benchmarks/gpu_check.py runs the trainer tests there): torch, torchvision, numpy, Pillow,
# scikit-learn and pytest, but no optuna, mlflow or torchao. The engine may not use the rest of hpsearch's
# stack either (yaml, click, rich, the database drivers, pandas). This preamble makes all of them unimportable:
# the finder that reads sys.path says they are not there, as for a module never installed.
TORCH_ALONE = """
import importlib.machinery
import sys
ABSENT = {"optuna", "mlflow", "torchao", "yaml", "click", "rich", "sqlalchemy", "alembic", "psycopg", "pandas"}

class Absent(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in ABSENT else super().find_spec(name, path, target)

sys.meta_path[:] = [Absent if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""
