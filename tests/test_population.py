"""Population-based training run for real: members take turns on worker processes, copy each other at interval
boundaries, and the study ends with exactly population × epochs epochs trained — through a killed worker, a
Ctrl-C and a run killed outright, and with two runs on one PostgreSQL study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpsearch.core import record_keys as keys
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.storage.stores import open_storage

from .support import run_cli, wait_for

EPOCHS = 4


def population_space(write_space, population: int = 4, interval: int = 1, epochs: int = EPOCHS, slots: int = 2,
                     **study):
    return write_space({
        "study": {"n_trials": population, "scheduler": {"name": "pbt", "population": population,
                                                        "interval": interval}, **study},
        "train": {"epochs": epochs},
        "search_space": {"lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
                         "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True}},
        "resources": {"trials_per_device": slots},
    })


def load(workdir, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=open_storage(storage or str(workdir / DEFAULT_STORAGE)))


def assert_whole_population(study: optuna.Study, population: int, epochs: int = EPOCHS) -> list:
    """Every member finished, each with exactly `epochs` epochs of scores, and no trial beside them."""
    trials = study.trials
    assert len(trials) == population, [t.state for t in trials]  # never a member lost or run twice
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    assert all(t.user_attrs[keys.ATTR_PBT_MEMBER] for t in trials)
    assert [sorted(t.intermediate_values) for t in trials] == [list(range(1, epochs + 1))] * population
    assert all(t.user_attrs[keys.ATTR_PBT_EPOCH] == epochs for t in trials)
    return trials


def assert_checkpoints_gone(workdir) -> None:
    folder = workdir / "studies" / "tiny" / "pbt"
    assert not list(folder.glob("*.pt")), sorted(p.name for p in folder.iterdir())  # nobody can use them now


def member_runs(workdir) -> dict[int, object]:
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`hpsearch.role` = 'trial'")
    numbers = [int(r.data.tags[keys.TAG_TRIAL]) for r in runs]
    assert len(numbers) == len(set(numbers)), numbers  # one child run per member, across all its turns
    return {int(r.data.tags[keys.TAG_TRIAL]): r for r in runs}


@pytest.mark.slow
def test_a_population_takes_turns_copies_the_top_and_records_its_lineage(write_space, workdir):
    space = population_space(write_space)
    result = run_cli("run", str(space), cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = assert_whole_population(load(workdir), 4)
    by_number = {t.number: t for t in trials}
    exploits = [(t, event) for t in trials for event in t.user_attrs.get(keys.ATTR_PBT_LINEAGE, [])]
    assert exploits, "4 members over 3 boundaries: the bottom one copies the top at least once"
    for receiver, event in exploits:
        epoch, donor = event["epoch"], by_number[event["from_trial"]]
        # It copied one that scored better at that boundary, and went on with params inside the search range.
        assert donor.intermediate_values[epoch] >= receiver.intermediate_values[epoch]
        assert 1.0e-4 <= event["params"]["lr"] <= 3.0e-2
        assert f"copied trial {donor.number}'s weights" in result.stdout
    for t in trials:
        # Its schedule: where its weights come from, from scratch, and the params after each exploit.
        schedule = t.user_attrs[keys.ATTR_PBT_SCHEDULE]
        assert schedule[0]["epoch"] == 1
        lineage = t.user_attrs.get(keys.ATTR_PBT_LINEAGE, [])
        if lineage:
            assert schedule[-1] == {"epoch": lineage[-1]["epoch"] + 1, "params": lineage[-1]["params"]}
        else:
            assert schedule == [{"epoch": 1, "params": t.params}]
    assert_checkpoints_gone(workdir)

    runs = member_runs(workdir)
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    for t in trials:
        run = runs[t.number]
        assert run.info.status == "FINISHED"
        # The hyperparameters it trained with, epoch by epoch: they move where it copied and perturbed.
        lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "hparam.lr")}
        assert sorted(lr) == list(range(1, EPOCHS + 1))
        lineage = t.user_attrs.get(keys.ATTR_PBT_LINEAGE, [])
        for event in lineage:
            assert lr[event["epoch"] + 1] == pytest.approx(event["params"]["lr"])
        if lineage:
            assert json.loads(run.data.tags[keys.TAG_PBT_LINEAGE]) == lineage
        else:
            assert len(set(lr.values())) == 1


def test_the_copy_at_a_boundary_is_exact_and_a_member_resumes_from_disk_where_it_paused(write_space, workdir):
    """In one process, two members' turns: the worse one copies the better's checkpoint bit for bit."""
    from hpsearch.orchestration import member
    from hpsearch.orchestration.objective import TrialContext
    from hpsearch.spec.study_spec import load_spec
    from hpsearch.tracking import mlflow_client, study_runs

    space = population_space(write_space, population=2, epochs=2)
    spec = load_spec(str(space))
    study = optuna.create_study(study_name="tiny", direction="maximize")
    tracker = study_runs.StudyTracker(spec.tracking.uri, "tiny")
    context = TrialContext(spec, study, mlflow_client.client_for(spec.tracking.uri), tracker.experiment_id,
                           tracker.parent_run("tiny", {}))
    ids = []
    for lr in (2.0e-2, 1.0e-4):  # a rate that learns at once, and one that barely moves in an epoch
        study.enqueue_trial({"lr": lr, "weight_decay": 1.0e-5})
        trial = study.ask()
        trial.set_user_attr(keys.ATTR_PBT_MEMBER, True)
        ids.append(trial._trial_id)
    outcome, good = member.run_member_turn(context, ids[0], None)
    assert outcome.state == member.PAUSED
    assert good.lineage == []
    outcome, bad = member.run_member_turn(context, ids[1], good)
    assert outcome.state == member.PAUSED
    assert [e["from_trial"] for e in bad.lineage] == [0]
    folder = member.checkpoints(spec)
    donor, receiver = folder.load(0, 1), folder.load(1, 1)
    resumed_with = bad.trainer.model.state_dict()
    for name, tensor in donor["model"].items():
        assert torch.equal(receiver["model"][name], tensor), name
        assert torch.equal(resumed_with[name].cpu(), tensor), name
    assert receiver["optimizer"]["state"].keys() == donor["optimizer"]["state"].keys()
    # Its own record stays its own: the epoch-1 score it reached with its own weights.
    assert receiver["history"][0]["val_accuracy"] == study.trials[1].intermediate_values[1]

    bad.release()  # the worker moved on: the next turn starts from the file, and trains epoch 2 only
    outcome, held = member.run_member_turn(context, ids[1], None)
    assert outcome.state == "COMPLETE"
    assert held is None
    finished = study.trials[1]
    assert sorted(finished.intermediate_values) == [1, 2]
    assert finished.user_attrs.get(keys.ATTR_PBT_RETRIED) is None  # nothing trained twice


def start_run(space, workdir, *args: str, **popen):
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(space), *args], cwd=workdir, **popen)


def member_past_a_boundary(workdir):
    """A member that has stored a checkpoint and trained an epoch beyond it, with its worker's pid."""
    try:
        trials = load(workdir).get_trials(states=(TrialState.RUNNING,))
    except (KeyError, FileNotFoundError):
        return None
    for t in trials:
        stored = t.user_attrs.get(keys.ATTR_PBT_EPOCH, 0)
        if stored and max(t.intermediate_values, default=0) > stored and not t.user_attrs.get(keys.ATTR_PBT_PAUSED):
            return t
    return None


@pytest.mark.slow
def test_a_killed_worker_costs_only_the_epochs_since_its_members_checkpoint(write_space, workdir):
    space = population_space(write_space, population=3, interval=2, epochs=6)
    proc = start_run(space, workdir)
    try:
        victim = wait_for(lambda: member_past_a_boundary(workdir), 240, "a member past its checkpoint")
        os.kill(victim.user_attrs[keys.ATTR_WORKER_PID], signal.SIGKILL)
        output, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "it goes on from its checkpoint at epoch" in output
    trials = assert_whole_population(load(workdir), 3, epochs=6)
    retried = {t.number: t.user_attrs.get(keys.ATTR_PBT_RETRIED, 0) for t in trials}
    assert retried[victim.number] >= 1, retried  # the epochs it trained past its checkpoint, counted, not hidden
    assert sum(retried.values()) == retried[victim.number]
    runs = member_runs(workdir)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[victim.number].data.tags[keys.TAG_PBT_RETRIED] == str(retried[victim.number])
    assert_checkpoints_gone(workdir)


@pytest.mark.slow
def test_ctrl_c_pauses_the_population_and_a_run_killed_outright_loses_no_member(write_space, workdir):
    space = population_space(write_space, population=3, interval=2, epochs=6, slots=1)
    proc = start_run(space, workdir)
    try:
        wait_for(lambda: member_past_a_boundary(workdir), 240, "a member past its checkpoint")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    study = load(workdir)
    # Stopped, not failed: every member waits, paused at its checkpoint, for the next run (none is a zombie).
    assert all(t.state == TrialState.RUNNING for t in study.trials), [t.state for t in study.trials]
    assert all(t.user_attrs[keys.ATTR_PBT_PAUSED] for t in study.trials)

    # Killed outright mid-turn (parent and workers): its member is left unpaused, with a dead owner.
    proc = start_run(space, workdir, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: member_past_a_boundary(workdir), 240, "a member past its checkpoint again")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    result = run_cli("run", str(space), cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reaped" not in result.stdout  # a member is never reaped as a zombie: it goes on
    assert "3 population member(s) go on from their checkpoints" in result.stdout
    trials = assert_whole_population(load(workdir), 3, epochs=6)
    assert sum(t.user_attrs.get(keys.ATTR_PBT_RETRIED, 0) for t in trials) >= 1
    assert all(r.info.status == "FINISHED" for r in member_runs(workdir).values())
    assert_checkpoints_gone(workdir)


@pytest.mark.slow
def test_two_runs_on_one_postgresql_study_share_one_population(write_space, workdir, postgres_url):
    space = population_space(write_space, population=4, interval=1, epochs=3, slots=1)
    cmd = [sys.executable, "-m", "hpsearch", "run", str(space), "--storage", postgres_url]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_whole_population(load(workdir, postgres_url), 4, epochs=3)
    # Both runs trained members (the work was shared, none twice: the epochs above are exact).
    assert all("paused at epoch" in out for out in outputs), outputs
    assert all(r.info.status == "FINISHED" for r in member_runs(workdir).values())
