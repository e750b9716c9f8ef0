"""Checkpoints through a real `mlflow server` (artifacts proxied by the server), and a checkpoint that
cannot be stored made visible: a warning line at once and a count in the run's summary."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.core.record_keys import TAG_CHECKPOINT_ERROR
from hpsearch.orchestration.builders import build_model_for, hparams_for
from hpsearch.spec.study_spec import load_spec
from hpsearch.storage.stores import open_storage
from hpsearch.tracking.mlflow_client import client_for

from .support import run_cli

pytestmark = pytest.mark.slow

DIGITS_CLASSES = 10


@pytest.fixture(params=["sqlite", "postgresql"])
def tracking_server(request, mlflow_server, tmp_path):
    """An `mlflow server --artifacts-destination …` on loopback, backed by SQLite or PostgreSQL."""
    if request.param == "sqlite":
        return mlflow_server(f"sqlite:///{tmp_path}/server.db")
    database = request.getfixturevalue("postgres_url")
    return mlflow_server(database.replace("postgresql://", "postgresql+psycopg://", 1))


def test_checkpoints_are_stored_and_exported_through_a_tracking_server(write_space, workdir, tracking_server):
    space = write_space({"study": {"n_trials": 2}, "train": {"epochs": 1}})
    env = {"OMP_NUM_THREADS": "1"}
    result = run_cli("run", str(space), "--tracking-uri", tracking_server, cwd=workdir, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout, result.stdout

    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    client = MlflowClient(tracking_server)
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert TAG_CHECKPOINT_ERROR not in run.data.tags, run.data.tags[TAG_CHECKPOINT_ERROR]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/model.pt"]

    # `best` names the checkpoint; --export and --evaluate download it through the server
    best = run_cli("best", "--format", "json", "--export", "--evaluate", "--device", "cpu",
                   "--tracking-uri", tracking_server, cwd=workdir, env=env)
    assert best.returncode == 0, best.stdout + best.stderr
    record = json.loads(best.stdout)
    assert record["checkpoint"] == (f"mlflow-artifacts:/{run.info.experiment_id}/{record['mlflow_run_id']}"
                                    "/artifacts/checkpoints/model.pt")
    assert 0.0 <= record["test_accuracy"] <= 1.0
    state_dict = torch.load(workdir / "studies" / "tiny" / "best" / "model.pt", weights_only=True)
    spec = load_spec(space)
    model = build_model_for(spec, hparams_for(spec, record["params"]), DIGITS_CLASSES, weights="none")
    model.load_state_dict(state_dict)  # strict: every tensor of the winning model, nothing else


def test_a_checkpoint_that_cannot_be_stored_is_a_warning_and_counted_in_the_summary(write_space, workdir):
    # The experiment's artifact folder lies under a plain file: no checkpoint can be written there.
    (workdir / "not-a-folder").write_text("")
    client_for("sqlite:///mlruns/mlflow.db").create_experiment(
        "tiny", artifact_location=(workdir / "not-a-folder" / "artifacts").as_uri()
    )
    space = write_space({"study": {"n_trials": 1}, "train": {"epochs": 1}})
    result = run_cli("run", str(space), cwd=workdir, env={"OMP_NUM_THREADS": "1"})
    # The trial is whole in the study; the run says what MLflow lacks, keeps the weights, and exits 1.
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("WARNING: trial 0: checkpoint not stored ([Errno 20] Not a directory")
               for line in lines), result.stdout
    assert lines[-1] == ("WARNING: 1 checkpoint(s) not stored (trial(s) 0); each run's MLflow tag "
                         "hpsearch.checkpoint_error says why, and a copy is kept under "
                         "studies/undelivered/<run id>/ (`hpsearch best` uses it)"), result.stdout
    assert "ERROR: 1 MLflow write(s) not delivered:" in result.stderr
    assert "  - trial 0's checkpoint ([Errno 20] Not a directory" in result.stderr
    # `best` takes the kept copy and says why it is not in MLflow
    best = run_cli("best", "--format", "json", cwd=workdir)
    record = json.loads(best.stdout)
    assert record["checkpoint"] is None
    assert record["checkpoint_local"].endswith("/model.pt")
    assert record["checkpoint_note"].startswith("trial 0's checkpoint never reached the tracking store: [Errno 20]")
