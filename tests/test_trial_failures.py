"""A failing trial ends as FAIL with its reason in Optuna and MLflow, and the worker goes on."""

from __future__ import annotations

import optuna
import pytest
import torch

from hpsearch import objective, tracking
from hpsearch.objective import TrialContext, run_trial
from hpsearch.registry import build_pruner, build_sampler, trial_seed
from hpsearch.spec import load_spec
from hpsearch.study import create_or_resume
from hpsearch.train import NonFiniteLoss


@pytest.fixture
def context(write_space, workdir):
    spec = load_spec(write_space({"train": {"epochs": 1}}))
    study, _ = create_or_resume(
        spec, build_sampler(spec.study.sampler, spec.search_space), build_pruner(spec.study.pruner), None
    )
    tracker = tracking.StudyTracker(spec.tracking.uri, spec.tracking.experiment)
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
    "exc, expected",
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
    assert outcome.state == "FAIL" and expected in outcome.reason
    tracking.drain()  # the worker closes runs on its writer thread

    frozen = context.study.trials[0]
    assert frozen.state == optuna.trial.TrialState.FAIL
    assert expected in frozen.user_attrs["fail_reason"]
    client = tracking.client_for(context.spec.tracking.uri)
    run = client.get_run(frozen.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"  # never left RUNNING
    assert run.data.tags["hpsearch.state"] == "FAIL"
    assert expected in run.data.tags["hpsearch.fail_reason"]

    # the same worker context trains the next trial normally
    second = context.study.ask()
    outcome = run_trial(context, second._trial_id)
    assert outcome.state == "COMPLETE" and outcome.value > 0


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
    tracking.drain()
    gc.collect()
    assert len(refs) == 4 and all(r() is None for r in refs)


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
    assert tracking.drain() == []  # its MLflow run still closes, with the result it reached

    # and the worker goes on: the next trial runs normally
    monkeypatch.setattr(objective, "build_trainer", real)
    assert run_trial(context, context.study.ask()._trial_id).state == "COMPLETE"
