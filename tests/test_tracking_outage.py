"""The tracking server goes away mid-study: nothing is lost, and what cannot be delivered is named.

Against a real `mlflow server` on loopback that is killed (SIGKILL, as a crash would) and restarted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.core.record_keys import ATTR_CHECKPOINT_PENDING, STUDY_UNDELIVERED
from hpsearch.storage.stores import open_storage

from .support import run_cli, wait_for

pytestmark = pytest.mark.slow

# Long enough for writes to fail and back off (the first retries come after 0.5, 1, 2 and 4 s) and for the
# trial to go on training meanwhile; the outage's length changes nothing else.
OUTAGE_SECONDS = 8


def _study(workdir) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name="tiny", storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    except (KeyError, FileNotFoundError):
        return None


def _run_with_an_outage(space, workdir, tracking_uri: str, env: dict, outage) -> tuple[int, str]:
    """`hpsearch run SPACE` in the background; `outage()` once a trial is mid-training. (exit code, output)"""
    with open(workdir / "run.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "run", str(space), "--tracking-uri", tracking_uri], cwd=workdir,
            stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        try:
            outage()
            rc = proc.wait(300)
        finally:
            proc.kill()
    return rc, (workdir / "run.log").read_text()


def _mid_trial(workdir, finished_first: int):
    """A RUNNING trial with an epoch reported, once `finished_first` trials have finished."""
    study = _study(workdir)
    if study is None:
        return None
    trials = study.get_trials(deepcopy=False)
    if sum(t.state.is_finished() for t in trials) < finished_first:
        return None
    return next((t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values), None)


def test_a_tracking_server_down_mid_study_loses_nothing(write_space, workdir, mlflow_server, tmp_path):
    url = mlflow_server(f"sqlite:///{tmp_path}/server.db")
    space = write_space({"study": {"n_trials": 3}, "train": {"epochs": 3}})

    def outage() -> None:
        wait_for(lambda: _mid_trial(workdir, finished_first=1), 240, "a trial mid-training after a finished one")
        mlflow_server.stop(url)
        time.sleep(OUTAGE_SECONDS)
        mlflow_server.restart(url)

    rc, output = _run_with_an_outage(space, workdir, url, {"OMP_NUM_THREADS": "1"}, outage)
    assert rc == 0, output
    assert "MLflow tracking unreachable" in output  # the wait was said, not silent
    assert "not delivered" not in output, output

    study = _study(workdir)
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state.is_finished() for t in trials) == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    client = MlflowClient(url)
    for trial in trials:
        if not trial.state.is_finished():
            continue
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED", (trial.number, run.info.status)
        # every epoch the trial reported to Optuna has its point in MLflow
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == sorted(trial.intermediate_values), trial.number
        if trial.state == TrialState.COMPLETE:
            files = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
            assert files == ["checkpoints/model.pt"], (trial.number, files)


def test_writes_still_undelivered_at_exit_are_named_kept_and_fail_the_run(write_space, workdir, mlflow_server,
                                                                          tmp_path):
    url = mlflow_server(f"sqlite:///{tmp_path}/server.db")
    space = write_space({"study": {"n_trials": 1}, "train": {"epochs": 4}})
    env = {"OMP_NUM_THREADS": "1", "HPSEARCH_DRAIN_SECONDS": "4"}

    def outage() -> None:  # the server never comes back
        wait_for(lambda: _mid_trial(workdir, finished_first=0), 240, "the trial mid-training")
        mlflow_server.stop(url)

    rc, output = _run_with_an_outage(space, workdir, url, env, outage)
    assert rc == 1, output
    assert "giving up in" in output  # the countdown
    assert "MLflow write(s) not delivered" in output
    assert "trial 0's checkpoint" in output, output
    assert "the close of trial 0's run" in output, output
    assert "the close of the study's parent run" in output, output

    # The study itself is whole: the trial is COMPLETE, its loss recorded in the study.
    study = _study(workdir)
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs[ATTR_CHECKPOINT_PENDING] is True
    assert any(item.startswith("trial 0's checkpoint") for item in study.user_attrs[STUDY_UNDELIVERED])

    # The checkpoint was kept on local disk: `best` says so plainly, and --export hands it over.
    best = run_cli("best", "--format", "json", "--export", "--tracking-uri", url, cwd=workdir,
                   env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert best.returncode == 0, best.stdout + best.stderr
    record = json.loads(best.stdout)
    assert record["checkpoint"] is None
    assert "never reached the tracking store" in record["checkpoint_note"], record
    assert record["checkpoint_local"].endswith(f"studies/undelivered/{trial.user_attrs['mlflow_run_id']}/model.pt")
    state = torch.load(record["exported"]["model.pt"], weights_only=True)
    assert state
    assert all(isinstance(v, torch.Tensor) for v in state.values())
