"""`hpsearch ui`: a real MLflow UI on the folder's store, links to the last study's runs and best trials,
and Ctrl-C ending the server's whole process tree."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import optuna
import psutil
import pytest
from mlflow import MlflowClient

from hpsearch.cli.ui import is_loopback
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.storage.stores import open_storage

from .support import free_port, run_cli, wait_for

UI_START_SECONDS = 120


class UiProcess:
    """`hpsearch ui ARGS` in the background, its stdout lines collected as they come."""

    def __init__(self, cwd, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "ui", *args], cwd=cwd, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line_starting(self, prefix: str) -> str:
        """The next stdout line that starts with `prefix` (fails when the command ends first)."""
        deadline = time.monotonic() + UI_START_SECONDS
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and not self.reader.is_alive():
                    stderr = self.proc.stderr.read()
                    raise AssertionError(f"hpsearch ui exited {self.proc.returncode}: {stderr}") from None
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r} within {UI_START_SECONDS}s")

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        code = self.proc.wait(60)
        return code, self.proc.stderr.read()

    def kill(self) -> None:  # cleanup after a failed assertion: nothing of the tree outlives the test
        if self.proc.poll() is None:
            for p in self.tree():
                p.kill()
            self.proc.wait(10)


def _gone(processes: list[psutil.Process]) -> bool:
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(alive(p) for p in processes)


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.read()


@pytest.mark.slow
def test_ui_links_the_last_study_and_ctrl_c_ends_its_whole_process_tree(finished_study):
    port = free_port()
    ui = UiProcess(finished_study, "--port", str(port))
    try:
        runs_line = ui.line_starting("study finished runs: ")
        compare_line = ui.line_starting("top ")
        tree = ui.tree()
        assert len(tree) >= 3  # mlflow's CLI, uvicorn, its workers: all must go

        base = f"http://127.0.0.1:{port}"
        experiment_id = re.fullmatch(rf"study finished runs: {re.escape(base)}/#/experiments/(\d+)/runs",
                                     runs_line).group(1)
        # The printed experiment is the study's, in this folder's store, and the UI itself serves it.
        client = MlflowClient(f"sqlite:///{finished_study}/mlruns/mlflow.db")
        assert client.get_experiment_by_name("finished").experiment_id == experiment_id
        assert b"<html" in _get(f"{base}/").lower()
        served = json.loads(_get(f"{base}/ajax-api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"))
        assert served["experiment"]["name"] == "finished"

        # The compare link names the study's best completed trials' runs, best first.
        label, url = compare_line.split(": ", 1)
        query = urllib.parse.parse_qs(url.split("#/compare-runs?", 1)[1])
        run_ids = json.loads(query["runs"][0])
        assert json.loads(query["experiments"][0]) == [experiment_id]
        study = optuna.load_study(study_name="finished", storage=open_storage(DEFAULT_STORAGE))
        complete = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                          key=lambda t: t.value, reverse=True)
        assert run_ids == [t.user_attrs["mlflow_run_id"] for t in complete[:5]]
        assert label == f"top {len(run_ids)} trials compared"
        assert len(run_ids) >= 2
        assert {client.get_run(r).info.experiment_id for r in run_ids} == {experiment_id}

        code, stderr = ui.stop(signal.SIGINT)
        assert code == 130, stderr
        assert "Traceback" not in stderr, stderr
        wait_for(lambda: _gone(tree), 15, "every process of the UI's tree to end")
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        ui.kill()


@pytest.mark.slow
def test_ui_without_a_study_shows_its_start_page_and_sigterm_exits_0(workdir):
    port = free_port()
    # MLflow's job runner is left out here: the test above ends the whole default tree.
    ui = UiProcess(workdir, "--port", str(port), env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        root = ui.line_starting("MLflow UI: ").split(": ", 1)[1]
        assert root == f"http://127.0.0.1:{port}/"
        assert b"<html" in _get(root).lower()
        tree = ui.tree()
        code, stderr = ui.stop(signal.SIGTERM)
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr
        wait_for(lambda: _gone(tree), 15, "every process of the UI's tree to end")
    finally:
        ui.kill()


def test_a_taken_port_is_one_line_exit_2(workdir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("ui", "--port", str(port), cwd=workdir, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --port: port {port} on 127.0.0.1 is in use; pick another with --port"]


def test_only_loopback_addresses_count_as_private():
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("10.1.2.3")
