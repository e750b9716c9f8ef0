"""Shared fixtures: every test runs in its own folder, so `studies/` and `mlruns/` are its own.

Helpers that test modules import by name (run_cli, REPO, TINY_SPACE) are in support.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpsearch.synthetic import write_image_folder

from .support import TINY_SPACE, merge


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh project folder as the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


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


@pytest.fixture
def image_folder():
    """write(root, layout, classes, train_per_class, test_per_class, size=32) → root."""
    return write_image_folder
