"""What a failed trial and a closed run record, the typed worker events, and the one
place that reaches into Optuna's private API."""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import optuna
import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from optuna.trial import TrialState

from hpsearch.cli.live import LiveView
from hpsearch.core import record_keys
from hpsearch.core.outages import short_reason
from hpsearch.core.record_keys import FailureKind
from hpsearch.orchestration.devices import plan_slots
from hpsearch.orchestration.events import (
    CheckpointFailed,
    EpochEnded,
    StoreNotice,
    TrialEnded,
    TrialStarted,
    WorkerFatal,
    WorkerFree,
    WorkerReady,
    WorkerRetiring,
    WritesLost,
    WritesPending,
)
from hpsearch.orchestration.orchestrator import Orchestrator, WorkerHandle
from hpsearch.orchestration.runner import checkpoints_lost_line
from hpsearch.search import trial_access
from hpsearch.storage import retries
from hpsearch.tracking import background_writer, mlflow_client, study_runs
from hpsearch.tracking.study_runs import StudyTracker, TrialRun, close_killed_run

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"


def _study() -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


# ------------------------------------------------------------------ failing a trial


def test_a_failed_trial_keeps_its_reason_and_failure_kind_under_the_names_users_read():
    study = _study()
    trial = study.ask()
    trial_access.fail_trial(study, trial, "out of memory: resnet18 at batch_size=512\n(traceback)", FailureKind.OOM)
    frozen = study.trials[0]
    assert frozen.state == TrialState.FAIL
    # The keys and values `status`, `best`, later runs and Optuna's own tools read: stable data, not names.
    assert frozen.user_attrs == {
        "fail_reason": "out of memory: resnet18 at batch_size=512", "hpsearch.fail_kind": "oom",
    }


def test_failing_a_trial_that_finished_meanwhile_changes_nothing():
    study = _study()
    trial = study.ask()
    study.tell(trial, 0.5)
    trial_access.fail_trial(study, study.trials[0], "worker process died", FailureKind.KILLED)
    frozen = study.trials[0]
    assert (frozen.state, frozen.value, frozen.user_attrs) == (TrialState.COMPLETE, 0.5, {})


@pytest.mark.parametrize(("failure", "retried"), [
    (FailureKind.KILLED, True), (FailureKind.REAPED, True), (FailureKind.INTERRUPTED, True),
    (FailureKind.OOM, False), (FailureKind.NONFINITE, False), (FailureKind.ERROR, False),
])
def test_only_failures_from_outside_the_trial_are_retried(failure, retried):
    study = _study()
    trial_access.fail_trial(study, study.ask(), "why", failure)
    assert [t.number for t in retries.retry_candidates(study)] == ([0] if retried else [])


# ------------------------------------------------------------------ closing a run


@pytest.fixture
def tracker(workdir):
    return StudyTracker("sqlite:///mlruns/mlflow.db", "records")


def _trial_run(tracker) -> TrialRun:
    return TrialRun.start(tracker.client, tracker.experiment_id, None, "records", 0, {"lr": 0.1})


def test_close_run_tags_the_state_and_a_bounded_reason(tracker):
    run = _trial_run(tracker)
    study_runs.close_run(tracker.client, run.run_id, "KILLED", state="FAIL", reason="x" * 5000)
    closed = tracker.client.get_run(run.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags["hpsearch.state"] == "FAIL"
    assert closed.data.tags["hpsearch.fail_reason"] == "x" * record_keys.MAX_TAG_CHARS


def test_every_way_a_run_ends_closes_it_once_with_its_state(tracker):
    finished, failed, killed = (_trial_run(tracker) for _ in range(3))
    finished.finish("PRUNED")
    failed.finish("FAIL", "RuntimeError: boom")
    close_killed_run("sqlite:///mlruns/mlflow.db", killed.run_id, "its worker process was gone")
    close_killed_run("sqlite:///mlruns/mlflow.db", finished.run_id, "late")  # already closed: left alone
    background_writer.drain()  # the parent closes runs on its writer thread
    parent = tracker.parent_run("records", {})
    tracker.close_parent(parent, {"best_val_accuracy": 0.9})
    assert background_writer.drain() == []

    def ended(run_id):
        run = tracker.client.get_run(run_id)
        return run.info.status, run.data.tags.get("hpsearch.state"), run.data.tags.get("hpsearch.fail_reason")

    assert ended(finished.run_id) == ("FINISHED", "PRUNED", None)
    assert ended(failed.run_id) == ("FAILED", "FAIL", "RuntimeError: boom")
    assert ended(killed.run_id) == ("KILLED", "FAIL", "its worker process was gone")
    assert ended(parent)[0] == "FINISHED"
    assert tracker.client.get_run(parent).data.metrics == {"best_val_accuracy": 0.9}


def test_a_checkpoint_that_cannot_be_stored_is_tagged_and_reported(tracker, monkeypatch):
    def refuse(self, state_dict, name="model.pt"):
        raise OSError("No space left on device")

    monkeypatch.setattr(TrialRun, "log_checkpoint", refuse)
    run, reported = _trial_run(tracker), []
    run.finish("COMPLETE", checkpoint={"w": 1}, wait=False, on_checkpoint_error=reported.append)
    background_writer.drain()  # it happens on the writer thread
    assert reported == ["No space left on device"]
    closed = tracker.client.get_run(run.run_id)
    assert closed.info.status == "FINISHED"
    assert closed.data.tags["hpsearch.state"] == "COMPLETE"
    assert closed.data.tags[record_keys.TAG_CHECKPOINT_ERROR] == "No space left on device"
    # Nothing lost: the weights are kept on local disk, where `best` finds them.
    import torch

    kept = background_writer.undelivered_checkpoint(run.run_id)
    assert torch.load(kept, weights_only=True) == {"w": 1}

    stored, reported = _trial_run(tracker), []
    stored.finish("COMPLETE", checkpoint=None, on_checkpoint_error=reported.append)
    assert reported == []
    assert record_keys.TAG_CHECKPOINT_ERROR not in tracker.client.get_run(stored.run_id).data.tags


# ------------------------------------------------------------------ worker → parent events


EVENTS = [
    WorkerReady(),
    WorkerFatal("dataset not found at data/cifar-10-batches-py"),
    WorkerRetiring("CUDA graph capture failed (x)"),
    TrialStarted(3, 2, {"lr": 0.01, "optimizer": "sgd"}),
    EpochEnded(3, 1, 2, {"val_accuracy": 0.5, "images_per_second": 1000.0}),
    TrialEnded(3, "FAIL", None, "out of memory: ...", FailureKind.OOM),
    WorkerFree(3),
    CheckpointFailed(3, "No space left on device"),
    StoreNotice("MLflow tracking unreachable (refused): waiting to deliver trial 3 epoch 1 metrics"),
    WritesPending(4, 55.0),
    WritesLost(["trial 3's checkpoint (refused; kept at /w/studies/undelivered/abc/model.pt)"]),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_cross_the_process_boundary_intact(event):
    assert pickle.loads(pickle.dumps(event)) == event  # they travel through a multiprocessing queue


class _Process:
    exitcode = None


def _orchestrator(capsys) -> tuple[Orchestrator, WorkerHandle]:
    study = _study()
    slot = plan_slots("cpu", 1, gpu_count=0, cpu_count=1)[0]
    live = LiveView("val_accuracy", "maximize", 4, interactive=False)
    orchestrator = Orchestrator(None, study, [slot], None, "", "0", "", live)
    trial = study.ask()
    handle = WorkerHandle(slot, _Process(), None, trial_id=trial_access.trial_id(trial), trial_number=trial.number)
    orchestrator.workers[slot.index] = handle
    capsys.readouterr()
    return orchestrator, handle


def test_the_parent_acts_on_each_kind_of_event(capsys):
    orchestrator, handle = _orchestrator(capsys)
    orchestrator._handle_event(0, WorkerReady())
    assert handle.ready

    orchestrator._handle_event(0, TrialStarted(0, 2, {"lr": 0.01}))
    orchestrator._handle_event(0, EpochEnded(0, 1, 2, {"val_accuracy": 0.5, "images_per_second": 1234.0}))
    orchestrator._handle_event(0, TrialEnded(0, "COMPLETE", 0.75))
    out = capsys.readouterr().out
    assert "[cpu#0] trial 0 started: lr=0.01" in out
    assert "[cpu#0] trial 0 epoch 1/2 val_accuracy=0.5 1,234 img/s" in out
    assert "trial 0 COMPLETE val_accuracy=0.75 — 1/4 finished" in out

    orchestrator._handle_event(0, WorkerFree(99))  # not the trial in hand
    assert handle.trial_id is not None
    orchestrator._handle_event(0, WorkerFree(0))
    assert handle.trial_id is None
    assert handle.trial_number is None

    orchestrator._handle_event(0, WorkerFatal("no dataset"))
    assert orchestrator.fatal == "no dataset"
    assert orchestrator.stop_requested


def test_a_lost_checkpoint_is_a_warning_at_once_and_a_count_in_the_summary(capsys):
    orchestrator, _ = _orchestrator(capsys)
    orchestrator._handle_event(0, TrialEnded(0, "COMPLETE", 0.75))
    orchestrator._handle_event(0, CheckpointFailed(0, "When an mlflow-artifacts URI was supplied, ...\n1. Set"))
    orchestrator.workers.clear()  # the last trial's checkpoint may fail after its worker has gone
    orchestrator._handle_event(0, CheckpointFailed(2, "No space left on device"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line]
    assert lines == ["WARNING: trial 0: checkpoint not stored (When an mlflow-artifacts URI was supplied, ...)",
                     "WARNING: trial 2: checkpoint not stored (No space left on device)"]
    assert orchestrator.checkpoints_lost == [0, 2]
    assert checkpoints_lost_line([0, 2]) == (
        "WARNING: 2 checkpoint(s) not stored (trial(s) 0, 2); each run's MLflow tag hpsearch.checkpoint_error says "
        "why, and a copy is kept under studies/undelivered/<run id>/ (`hpsearch best` uses it)"
    )


def test_an_exiting_worker_still_delivering_gets_its_time_and_its_losses_are_kept(capsys):
    orchestrator, _ = _orchestrator(capsys)
    orchestrator._handle_event(0, StoreNotice("MLflow tracking unreachable (refused): waiting"))
    orchestrator._handle_event(0, WritesPending(3, 50.0))
    assert orchestrator.stop_deadline > time.monotonic() + 50.0  # not killed after the usual 15 s grace
    orchestrator.workers.clear()  # it reports its losses as it exits
    orchestrator._handle_event(0, WritesLost(["trial 0 epoch 2 metrics (refused)"]))
    out = capsys.readouterr().out
    assert "slot 0: MLflow tracking unreachable (refused): waiting" in out
    assert "slot 0: 3 MLflow write(s) still waiting for the tracking store; giving up in 50s" in out
    assert orchestrator.undelivered == ["trial 0 epoch 2 metrics (refused)"]


def test_trials_failing_in_a_row_stop_the_run_with_the_last_reason(capsys):
    orchestrator, _ = _orchestrator(capsys)
    for number in range(orchestrator.MIN_FAILURES_IN_A_ROW):
        assert not orchestrator.stop_requested
        orchestrator._handle_event(0, TrialEnded(number, "FAIL", None, f"boom {number}\ndetail", FailureKind.ERROR))
    assert orchestrator.stop_requested
    assert orchestrator.fatal.endswith("the last: boom 4")


# ------------------------------------------------------------------ Optuna's private API


def test_only_records_reaches_into_optunas_private_api():
    """The optuna<6 pin has one place to check: every private call is wrapped in search/trial_access.py."""
    private = re.compile(r"\._storage\b|\._trial_id\b|\boptuna\.trial\.Trial\(|\._study_id\b|\._cached")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.name != "trial_access.py"
        for number, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(("error", "waits", "said"), [
    (MlflowException("API request to http://h/api/2.0/mlflow/runs/create failed with exception "
                     "HTTPConnectionPool(host='h', port=5000): Max retries exceeded with url: /api "
                     "(Caused by NewConnectionError(...: [Errno 111] Connection refused'))"),
     True, "connection refused"),
    (MlflowException("API request to http://h/api failed with exception ...(Caused by "
                     "ResponseError('too many 503 error responses'))"), True, "the server answered 503"),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "database is locked"}), True, None),
    (RestException({"error_code": "INTERNAL_ERROR", "message": "could not connect to server"}), True, None),
    (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric"}), False, None),
    (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}), False, None),
    (MlflowException("When an mlflow-artifacts URI was supplied, the tracking URI must be ..."), False, None),
    (requests.ConnectionError("refused"), True, None),
    (OSError("No space left on device"), False, None),
])
def test_only_an_unreachable_store_is_waited_for(error, waits, said):
    """An outage is waited out; a refusal (bad input, a missing run) fails at once, as it always did."""
    assert mlflow_client.unreachable(error) is waits
    if said:
        assert short_reason(error) == said
