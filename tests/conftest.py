"""Shared fixtures: every test runs in its own folder, so `studies/` and `mlruns/` are its own.

Helpers that test modules import by name (run_cli, REPO, TINY_SPACE) are in support.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from hpsearch.engine.synthetic import write_image_folder

from .support import TINY_SPACE, merge

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

# The trainer's tests run in a process of their own, where only torch and what comes with it can be imported
# (test_trainer_torch_alone.py): leave them out of this session's collection so each runs once. Named on the
# command line (`python -m pytest tests/trainer_tests`), they are collected as usual.
collect_ignore = ["trainer_tests"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """How pytest-xdist shares the tests between its processes (`-n 2 --dist loadgroup`, pyproject.toml): a test
    file stays on one process (its module fixtures are built once), and so do all the tests that read the one
    trained study (`finished_study`), so that it is trained once."""
    for item in items:
        group = "finished-study" if "finished_study" in getattr(item, "fixturenames", ()) else item.path.name
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its tables made, once: a fresh store's migration costs every
    `hpsearch run` ~1.5 s, and a copy of the migrated file is the same store a first run would make."""
    folder = tmp_path_factory.mktemp("mlflow-template")
    subprocess.run([sys.executable, "-c", "from mlflow import MlflowClient; "
                    "MlflowClient('sqlite:///mlruns/mlflow.db').search_experiments()"],
                   cwd=folder, check=True, capture_output=True, timeout=300)
    return folder / "mlruns" / "mlflow.db"


@pytest.fixture
def workdir(tmp_path, monkeypatch, mlflow_store_template):
    """A fresh project folder as the current directory, its (empty) MLflow store already migrated."""
    import shutil

    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(mlflow_store_template, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_space(workdir):
    import yaml  # here, not at the top: tests/trainer_tests load this file on GPU boxes with torch alone

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


@pytest.fixture
def postgres_url():
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"hpsearch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


MLFLOW_SERVER_START_SECONDS = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole group (the server, uvicorn and its workers); SIGKILL to what is left after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader, or a leader that hung
    except ProcessLookupError:
        pass
    proc.wait(5)


class MlflowServers:
    """`mlflow server` processes on loopback, each serving artifacts from a folder under `root`.

    Calling it starts one and returns its URL; `stop(url)` kills it at once (an outage), `restart(url)`
    brings it back on the same port with the same stores.
    """

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.backends: dict[str, str] = {}

    def __call__(self, backend_store_uri: str, port: int | None = None) -> str:
        port = port or _free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = self.root / f"mlflow-server-{port}.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
                 "--artifacts-destination", str(self.root / f"artifacts-{port}"),
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        self.procs[url], self.backends[url] = proc, backend_store_uri
        deadline = time.monotonic() + MLFLOW_SERVER_START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    return url
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)

    def stop(self, url: str) -> None:
        proc = self.procs.pop(url)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def restart(self, url: str) -> str:
        return self(self.backends[url], port=int(url.rsplit(":", 1)[1]))

    def close(self) -> None:
        for proc in self.procs.values():
            _end_process_group(proc)


@pytest.fixture
def mlflow_server(tmp_path):
    """An MlflowServers under tmp_path: mlflow_server(backend_store_uri) → the URL of a started server;
    each server's whole process group is ended afterwards."""
    servers = MlflowServers(tmp_path)
    yield servers
    servers.close()


# A finished search to look at (report, UI, registry, dashboard tests): trained once per test session,
# copied into each test's own folder so that what a test writes there stays its own.
FINISHED_SPACE = {
    "study": {"name": "finished", "n_trials": 4, "sampler": {"name": "random", "seed": 11},
              "pruner": {"name": "none"}},
    "search_space": {
        "lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    },
}


@pytest.fixture(scope="session")
def finished_study_template(tmp_path_factory) -> Path:
    import shutil

    import yaml

    from .support import run_cli

    folder = tmp_path_factory.mktemp("finished-study")
    space = merge(TINY_SPACE, FINISHED_SPACE)
    space["train"] = {k: v for k, v in space["train"].items() if k != "optimizer"}
    (folder / "finished.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    proc = run_cli("run", "finished.yaml", cwd=folder, timeout=900)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(folder / "studies" / "finished" / "report", ignore_errors=True)  # each test makes its own
    return folder


@pytest.fixture
def finished_study(finished_study_template, workdir) -> Path:
    """The current folder holds a finished 4-trial study `finished` (space file finished.yaml,
    journal in studies/, MLflow store in mlruns/): what a user has after `hpsearch run finished.yaml`."""
    import shutil

    shutil.copytree(finished_study_template, workdir, dirs_exist_ok=True)
    return workdir
