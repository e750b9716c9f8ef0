"""run → status → best → export → train on real (digits) data, read back with Optuna's and MLflow's own APIs."""

from __future__ import annotations

import json
import shutil
import time

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from hpsearch.cli.main import cli, main
from hpsearch.core.locations import DEFAULT_STORAGE, DEFAULT_TRACKING_URI
from hpsearch.storage.stores import open_storage
from hpsearch.tracking.mlflow_client import client_for

from .support import TINY_SPACE, merge, run_cli

pytestmark = pytest.mark.slow


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def child_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("hpsearch.role") == "study"]
    children = [r for r in runs if r.data.tags.get("hpsearch.role") == "trial"]
    return parents, children


def test_run_status_best_export_train(write_space, workdir):
    shutil.rmtree(workdir / "mlruns")  # a user's first run: hpsearch makes the MLflow store itself
    space = write_space()
    result = invoke("run", str(space))
    assert result.exit_code == 0, result.output
    assert "3/3 finished" in result.output

    # Optuna reads the study back from the embedded default storage.
    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(0.0 <= t.value <= 1.0 for t in trials)
    assert study.best_value > 0.3  # ten digit classes: chance is 0.1

    # MLflow: one parent, three nested children with params, tags, stepped metrics and checkpoints.
    client = client_for(DEFAULT_TRACKING_URI)
    parents, children = child_runs(client, "tiny")
    assert len(parents) == 1
    assert len(children) == 3
    parent_id = parents[0].info.run_id
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for t in trials:
        run = by_number[t.number]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.run_name == f"trial-{t.number}"
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["optuna.study_name"] == "tiny"
        assert run.data.tags["hpsearch.state"] == "COMPLETE"
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert float(params["lr"]) == pytest.approx(t.params["lr"])
        assert params["optimizer"] == "adamw"
        assert params["epochs"] == "2"  # fixed values logged too
        assert params["model"] == "shufflenet_v2_x0_5"
        assert params["dataset"] == "digits"
        for name in ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_second"):
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted(m.step for m in history) == [1, 2], name
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        assert artifacts == ["checkpoints/model.pt"]
    assert client.get_run(parent_id).info.status == "FINISHED"

    # status, in all three formats
    rows = json.loads(invoke("status", "--format", "json").output)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert {"lr", "dropout"} <= set(rows[0]["params"])
    csv_out = invoke("status", "--format", "csv").output.splitlines()
    assert csv_out[0].startswith("number,state,value")
    assert len(csv_out) == 4
    table = invoke("status", "--study", "tiny").output
    assert "COMPLETE" in table
    assert "study tiny" in table

    # best (no SPACE: the study last run here) and export
    best = json.loads(invoke("best", "--format", "json").output)
    assert best["trial_number"] == study.best_trial.number
    assert best["value"] == pytest.approx(study.best_value)
    assert best["mlflow_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert best["study_name"] == "tiny"
    assert best["storage"]
    assert best["tracking_uri"] == DEFAULT_TRACKING_URI
    assert best["checkpoint"].endswith("checkpoints/model.pt")

    result = invoke("best", "--export")
    assert result.exit_code == 0, result.output
    out = workdir / "studies" / "tiny" / "best"
    state_dict = torch.load(out / "model.pt", weights_only=True)
    assert "fc.weight" in state_dict or any(k.endswith("fc.1.weight") for k in state_dict)
    exported = yaml.safe_load((out / "best.yaml").read_text())
    assert exported.get("search_space") in (None, {})
    assert exported["train"]["lr"] == pytest.approx(best["params"]["lr"])
    assert json.loads((out / "trial.json").read_text())["trial_number"] == best["trial_number"]
    assert invoke("validate", str(out / "best.yaml")).exit_code == 0

    # the exported winner retrains and reports test accuracy; its run is logged like a trial
    result = invoke("train", str(out / "best.yaml"))
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    assert (workdir / "studies" / "tiny" / "train" / "final.pt").exists()
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              filter_string="tags.`hpsearch.role` = 'train'")
    assert len(runs) == 1
    assert "test_accuracy" in runs[0].data.metrics

    result = invoke("best", "--evaluate", "--format", "json")
    assert result.exit_code == 0, result.output
    assert 0.1 < json.loads(result.output)["test_accuracy"] <= 1.0


def test_resume_adds_only_missing_trials_and_keeps_one_parent(write_space, workdir):
    space = write_space({"study": {"n_trials": 2}})
    assert invoke("run", str(space)).exit_code == 0
    result = invoke("run", str(space), "--n-trials", "3")
    assert result.exit_code == 0, result.output
    assert "resuming study 'tiny'" in result.output
    assert "running 1 more trial" in result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    assert len(study.trials) == 3
    # a third run with the budget met trains nothing
    result = invoke("run", str(space), "--n-trials", "3")
    assert "running" not in result.output
    assert "3/3 finished" in result.output
    parents, children = child_runs(client_for(DEFAULT_TRACKING_URI), "tiny")
    assert len(parents) == 1
    assert len(children) == 3


def test_pruned_trial_keeps_its_curve(write_space, workdir):
    # val_accuracy can never reach 1.1: every trial is pruned at its first epoch past the warm-up.
    space = write_space(
        {
            "study": {"n_trials": 2, "pruner": {"name": "threshold", "lower": 1.1, "n_warmup_steps": 2}},
            "train": {"epochs": 4},
        }
    )
    result = invoke("run", str(space))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    client = client_for(DEFAULT_TRACKING_URI)
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["hpsearch.state"] == "PRUNED"
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(steps) == [1, 2]  # pruned at epoch 2 of 4, with its curve so far
        # the default checkpoint policy keeps weights of complete trials only
        assert client.list_artifacts(run.info.run_id, "checkpoints") == []
    rows = json.loads(invoke("status", "--format", "json").output)
    assert all(r["state"] == "PRUNED" and r["epochs_run"] == 2 for r in rows)
    # no completed trial: `best` says so plainly, exit 2
    with pytest.raises(SystemExit) as exc:
        main(["best"])
    assert exc.value.code == 2


def test_timeout_stops_starting_trials_and_keeps_what_finished(write_space, workdir):
    space = write_space({"study": {"n_trials": 50}, "train": {"epochs": 1}})
    started = time.monotonic()
    result = invoke("run", str(space), "--timeout", "15s")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 15 + 30  # the timeout, worker start-up and one last trial
    assert "stopped by --timeout" in result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    # trials running when the time ran out finish; none starts after it (a trial takes seconds here)
    assert 1 <= len(study.trials) < 50
    assert all(t.state.is_finished() for t in study.trials)


def test_no_test_split_trains_on_more_and_evaluate_refuses_clearly(write_space, workdir):
    space = write_space({"study": {"n_trials": 1}, "train": {"epochs": 1},
                         "task": {"data": {"test_fraction": 0.0}}})
    result = invoke("run", str(space))
    assert result.exit_code == 0, result.output
    parents, _ = child_runs(client_for(DEFAULT_TRACKING_URI), "tiny")
    assert parents[0].data.params["test_fraction"] == "0.0"
    assert parents[0].data.params["val_fraction"] == "0.2"

    refused = run_cli("best", "--evaluate", cwd=workdir)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip() == ("error: --evaluate: study 'tiny' held out no test split "
                                      "(task.data.test_fraction: 0); rerun with a test_fraction above 0 to measure one")


def test_the_startup_trials_are_the_study_seeds_on_one_slot_or_two(tmp_path, mlflow_store_template):
    """Trial n draws the same values whichever worker runs it: two slots repeat one slot's random trials."""
    space = merge(TINY_SPACE, {"study": {"n_trials": 3, "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 3}},
                               "train": {"epochs": 1}})
    params = {}
    for slots in (1, 2):
        folder = tmp_path / f"slots-{slots}"
        (folder / "mlruns").mkdir(parents=True)
        shutil.copyfile(mlflow_store_template, folder / "mlruns" / "mlflow.db")
        (folder / "tiny.yaml").write_text(yaml.safe_dump(merge(space, {"resources": {"trials_per_device": slots}})))
        result = run_cli("run", "tiny.yaml", cwd=folder)
        assert result.returncode == 0, result.stdout + result.stderr
        study = optuna.load_study(study_name="tiny", storage=open_storage(str(folder / DEFAULT_STORAGE)))
        params[slots] = {t.number: t.params for t in study.get_trials()}
    assert len(params[1]) == 3
    assert params[1] == params[2]
