"""A failing trial ends as FAIL with its reason in Optuna and MLflow, and the worker goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.core import record_keys
from hpsearch.core.record_keys import FailureKind
from hpsearch.core.seeding import trial_seed
from hpsearch.engine.train import NonFiniteLoss
from hpsearch.orchestration import objective
from hpsearch.orchestration.objective import TrialContext, run_trial
from hpsearch.search import trial_access
from hpsearch.search.samplers import build_pruner, build_sampler
from hpsearch.spec.study_spec import load_spec
from hpsearch.storage import retries
from hpsearch.storage.stores import create_or_resume
from hpsearch.tracking import background_writer, mlflow_client, study_runs

from .support import run_cli, wait_for
from .test_workers import assert_nothing_left_running, interrupt, load, start_run_until_mid_trial


@pytest.fixture
def context(write_space, workdir):
    spec = load_spec(write_space({"train": {"epochs": 1}}))
    study, _ = create_or_resume(
        spec, build_sampler(spec.study.sampler, spec.search_space), build_pruner(spec.study.pruner), None
    )
    tracker = study_runs.StudyTracker(spec.tracking.uri, spec.tracking.experiment)
    parent = tracker.parent_run(spec.study.name, {})
    events = []
    ctx = TrialContext(spec, study, tracker.client, tracker.experiment_id, parent, "cpu", events.append)
    return ctx


def failing_build(exc):
    real = objective.build_trainer

    def build(spec, hp, device, seed):
        trainer, data = real(spec, hp, device, seed)

        def fit(on_epoch=None):
            raise exc

        trainer.fit = fit
        return trainer, data

    return build


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("boom in the data pipeline"), "RuntimeError: boom in the data pipeline"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
         "out of memory: shufflenet_v2_x0_5 at batch_size=64, image_size=32"),
        (NonFiniteLoss("non-finite training loss (nan) at epoch 1, step 3"),
         "non-finite training loss (nan) at epoch 1, step 3"),
    ],
)
def test_failure_ends_the_trial_and_the_worker_goes_on(context, monkeypatch, exc, expected):
    with monkeypatch.context() as patch:
        patch.setattr(objective, "build_trainer", failing_build(exc))
        first = context.study.ask()
        outcome = run_trial(context, first._trial_id)
    assert outcome.state == "FAIL"
    assert expected in outcome.reason
    background_writer.drain()  # the worker closes runs on its writer thread

    frozen = context.study.trials[0]
    assert frozen.state == optuna.trial.TrialState.FAIL
    assert expected in frozen.user_attrs["fail_reason"]
    client = mlflow_client.client_for(context.spec.tracking.uri)
    run = client.get_run(frozen.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"  # never left RUNNING
    assert run.data.tags["hpsearch.state"] == "FAIL"
    assert expected in run.data.tags["hpsearch.fail_reason"]

    # the same worker context trains the next trial normally
    second = context.study.ask()
    outcome = run_trial(context, second._trial_id)
    assert outcome.state == "COMPLETE"
    assert outcome.value > 0


def test_trial_seed_is_the_same_everywhere_and_differs_between_trials():
    # Pinned values: a study resumed on another machine, in another process or after an upgrade trains
    # trial n with the seed it had (a hash() or RNG-based seed would change from process to process).
    assert [trial_seed(0, n) for n in range(3)] == [171340460, 709825519, 1554589843]
    assert trial_seed(42, 7) == 934042997
    seeds = {trial_seed(s, n) for s in range(3) for n in range(50)}
    assert len(seeds) == 150  # every (study seed, trial) pair trains from its own seed
    assert all(0 <= s < 2**31 for s in seeds)  # a valid seed for torch, numpy and random alike


def test_when_condition_only_suggests_under_its_condition(write_space):
    spec = load_spec(
        write_space(
            {
                "search_space": {
                    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
                    "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
                }
            },
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    fixed = {k: v for k, v in spec.train.items() if k != "optimizer"}
    seen = set()
    for _ in range(20):
        trial = study.ask()
        params = objective.suggest(trial, spec.search_space, fixed)
        seen.add(params["optimizer"])
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        study.tell(trial, 0.0)
    assert seen == {"sgd", "adamw"}


def test_a_finished_trial_releases_its_model_and_trainer(context, monkeypatch):
    """A worker runs trial after trial: nothing of a finished trial's model may stay alive."""
    import gc
    import weakref

    refs = []
    real = objective.build_trainer

    def build(spec, hp, device, seed):
        trainer, data = real(spec, hp, device, seed)
        refs.extend([weakref.ref(trainer), weakref.ref(trainer.model)])
        return trainer, data

    monkeypatch.setattr(objective, "build_trainer", build)
    for _ in range(2):
        assert run_trial(context, context.study.ask()._trial_id).state == "COMPLETE"
    background_writer.drain()
    gc.collect()
    assert len(refs) == 4
    assert all(r() is None for r in refs)


def test_a_trial_reaped_by_another_run_while_it_trains_ends_cleanly(context, monkeypatch):
    """Another machine took the trial for orphaned (a late heartbeat) and failed it: our tell must
    not crash the worker, and the outcome says what happened."""
    real = objective.build_trainer

    def reaped_meanwhile(spec, hp, device, seed):
        trainer, data = real(spec, hp, device, seed)
        fit = trainer.fit

        def fit_then_reaped(on_epoch=None):
            fit(on_epoch)
            other = optuna.load_study(study_name=context.study.study_name, storage=context.study._storage)
            other.tell(trial.number, state=optuna.trial.TrialState.FAIL)

        trainer.fit = fit_then_reaped
        return trainer, data

    monkeypatch.setattr(objective, "build_trainer", reaped_meanwhile)
    trial = context.study.ask()
    outcome = run_trial(context, trial._trial_id)
    assert outcome.state == "FAIL"
    assert "another run had already marked it FAIL" in outcome.reason
    assert context.study.trials[0].state == optuna.trial.TrialState.FAIL
    assert background_writer.drain() == []  # its MLflow run still closes, with the result it reached

    # and the worker goes on: the next trial runs normally
    monkeypatch.setattr(objective, "build_trainer", real)
    assert run_trial(context, context.study.ask()._trial_id).state == "COMPLETE"


# ------------------------------------------------------------------ retries, until the configuration has run

K = FailureKind


# The failures of a configuration's attempts so far, the last one first retried or not.
ATTEMPTS = [
    pytest.param((K.INTERRUPTED,), True, id="interrupted"),
    pytest.param((K.INTERRUPTED, K.REAPED), True, id="interrupted-then-its-retry-killed-outright"),
    pytest.param((K.INTERRUPTED, K.INTERRUPTED), True, id="interrupted-twice"),
    pytest.param((K.INTERRUPTED,) * 6, True, id="interrupted-six-times"),
    pytest.param((K.INTERRUPTED, K.KILLED), True, id="interrupted-then-its-worker-killed"),
    pytest.param((K.KILLED,), True, id="worker-killed"),
    pytest.param((K.KILLED, K.INTERRUPTED), True, id="worker-killed-then-interrupted"),
    pytest.param((K.KILLED, K.KILLED), False, id="worker-killed-twice"),
    pytest.param((K.REAPED,) * 3, True, id="reaped-three-times"),
    pytest.param((K.REAPED,) * 4, False, id="reaped-four-times"),
    pytest.param((K.OOM, K.INTERRUPTED), True, id="oom-beside-neighbours-then-interrupted"),
    pytest.param((K.OOM, K.OOM), False, id="oom-beside-neighbours-twice"),
    pytest.param((K.OOM, K.KILLED), False, id="oom-then-its-worker-killed"),  # two failures of its own
]


@pytest.mark.parametrize(("failures", "retried"), ATTEMPTS)
def test_a_configuration_is_retried_until_it_has_really_run(failures, retried):
    study = optuna.create_study()
    for i, failure in enumerate(failures):
        if i:
            assert retries.enqueue_retry(study, study.trials[-1])
        trial = study.ask()  # the next worker takes the retry first
        trial.suggest_float("lr", 1e-3, 1e-1)
        trial_access.fail_trial(study, trial, "why", failure)
    last = study.trials[-1]
    if failure in record_keys.RETRIED_FAILURES:  # what the next run looks at (OOM is retried at once, or never)
        assert retries.retry_candidates(study) == [last]
    assert retries.enqueue_retry(study, last) is retried
    if retried:
        waiting = study.trials[-1]
        assert waiting.state == TrialState.WAITING
        assert waiting.system_attrs["fixed_params"] == study.trials[0].params
        assert waiting.user_attrs[record_keys.ATTR_RETRY_OF] == 0  # the first attempt: every retry names it
        assert not retries.enqueue_retry(study, last)  # once per attempt, however often asked


def _retry_mid_training(workdir, of: int):
    try:
        trials = load(workdir).get_trials(states=(TrialState.RUNNING,))
    except (KeyError, FileNotFoundError):
        return None
    return next((t for t in trials
                 if t.user_attrs.get(record_keys.ATTR_RETRY_OF) == of and t.intermediate_values), None)


@pytest.mark.slow
def test_a_retry_interrupted_again_is_retried_until_its_configuration_completes(write_space, workdir):
    """Ctrl-C mid-trial, then kill -9 of the run that retries it: the next run retries it once more."""
    space = write_space({"study": {"n_trials": 1}, "train": {"epochs": 6}})  # one trial: the victim
    proc, victim = start_run_until_mid_trial(space, workdir)
    output, _ = interrupt(proc)
    assert proc.returncode == 130, output

    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(space)], cwd=workdir,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        retry = wait_for(lambda: _retry_mid_training(workdir, victim.number), 240, "the retry mid-training")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert load(workdir).trials[retry.number].state == TrialState.RUNNING  # nobody closed it

    result = run_cli("run", str(space), cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"retrying trial(s) {retry.number}" in result.stdout
    study = load(workdir)
    attempts = [t for t in study.trials if victim.number in (t.number, t.user_attrs.get(record_keys.ATTR_RETRY_OF))]
    assert [t.state for t in attempts] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.user_attrs.get(record_keys.ATTR_FAILURE) for t in attempts[:2]] == ["interrupted", "reaped"]
    assert all(t.params == victim.params for t in attempts)  # the configuration has really run
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 1
    assert_nothing_left_running(workdir)
