"""What hpsearch records about trials, in one place.

- the names of the Optuna user attributes and MLflow tags it writes (their values are users' data,
  read by `status`, `best`, later runs and other tools: never change them);
- the typed events a worker process sends to the parent;
- `fail_trial` and `close_run`, the one way a trial is failed and an MLflow run is closed;
- every call into Optuna's private API, each behind a small function, so that the `optuna<6` pin
  has one place to check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core.credentials import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

# ---------------------------------------------------------------- Optuna trial user attributes

ATTR_RUN_ID = "mlflow_run_id"
ATTR_HOST = "hpsearch.host"
ATTR_OWNER_PID = "hpsearch.owner_pid"
ATTR_OWNER_START = "hpsearch.owner_started"
ATTR_WORKER_PID = "hpsearch.worker_pid"
ATTR_SLOT = "hpsearch.slot"  # the device slot that ran it: "cuda:0 #1" (its device, then its slot index)
ATTR_HEARTBEAT = "hpsearch.heartbeat"
ATTR_EPOCHS = "hpsearch.epochs"  # epochs done, where Optuna keeps no intermediate values (multi-objective trials)
ATTR_FAIL_REASON = "fail_reason"
ATTR_FAILURE = "hpsearch.fail_kind"  # a FailureKind value
ATTR_RETRY_OF = "hpsearch.retry_of"
ATTR_RETRY_REASON = "hpsearch.retry_reason"
# True on a COMPLETE trial told before its checkpoint was stored (it is written afterwards, on the
# worker's writer thread): where MLflow lacks it, `best` says why instead of guessing.
ATTR_CHECKPOINT_PENDING = "hpsearch.checkpoint_pending"

# ---------------------------------------------------------------- Optuna study user attributes

STUDY_SPACE_FILE = "hpsearch.space_file"
STUDY_SPEC = "hpsearch.spec"  # the resolved spec, Spec.to_dict()
STUDY_METRIC = "hpsearch.metric"
STUDY_TRACKING_URI = "hpsearch.tracking_uri"
STUDY_UNDELIVERED = "hpsearch.undelivered"  # MLflow writes the last run could not deliver: [description]

# ---------------------------------------------------------------- MLflow run tags

TAG_ROLE = "hpsearch.role"  # "study", "trial" or "train"
TAG_STATE = "hpsearch.state"
TAG_FAIL_REASON = "hpsearch.fail_reason"
TAG_CHECKPOINT_ERROR = "hpsearch.checkpoint_error"
TAG_STUDY = "optuna.study_name"
TAG_TRIAL = "optuna.trial_number"
TAG_PARENT = "mlflow.parentRunId"
MAX_TAG_CHARS = 4000

# ---------------------------------------------------------------- MLflow model version tags (`best --register`)

MODEL_TAG_METRIC = "hpsearch.metric"  # the study's metric name
MODEL_TAG_VALUE = "hpsearch.value"  # the winner's value of it

# Optuna trial state → MLflow run status.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


class FailureKind(StrEnum):
    """Why a trial failed, kept in ATTR_FAILURE."""

    ERROR = "error"  # an exception in the trial
    NONFINITE = "nonfinite"  # the loss became nan or inf
    OOM = "oom"  # out of memory
    INTERRUPTED = "interrupted"  # the run was stopped (Ctrl-C, SIGTERM)
    KILLED = "killed"  # its worker process died
    REAPED = "reaped"  # its owner was gone, found by a later run


# Failures from outside the trial itself: such a trial is retried with the same parameters (study.RETRIES_ALLOWED).
RETRIED_FAILURES = (FailureKind.KILLED, FailureKind.REAPED, FailureKind.INTERRUPTED)

# ---------------------------------------------------------------- worker → parent events


@dataclass(frozen=True)
class WorkerEvent:
    """A message from a worker process to the parent, sent as (slot index, event)."""


@dataclass(frozen=True)
class WorkerReady(WorkerEvent):
    """Set up (dataset loaded, weights checked): the worker takes trials now."""


@dataclass(frozen=True)
class WorkerFatal(WorkerEvent):
    """A set-up problem every trial would meet (a missing dataset or weights file): the run stops."""

    message: str


@dataclass(frozen=True)
class WorkerRetiring(WorkerEvent):
    """The worker exits after this trial and a fresh process takes its slot."""

    reason: str


@dataclass(frozen=True)
class TrialStarted(WorkerEvent):
    trial: int  # the trial's number
    epochs: int
    params: dict[str, Any]  # the searched values


@dataclass(frozen=True)
class EpochEnded(WorkerEvent):
    trial: int
    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]  # params.EPOCH_METRICS


@dataclass(frozen=True)
class TrialEnded(WorkerEvent):
    """The trial is told to Optuna and its run closed (or queued to close)."""

    trial: int
    state: str  # "COMPLETE", "PRUNED" or "FAIL"
    value: float | None
    reason: str | None = None
    failure: FailureKind | None = None  # set when state is FAIL


@dataclass(frozen=True)
class CheckpointFailed(WorkerEvent):
    """The trial's checkpoint could not be stored (its run also carries TAG_CHECKPOINT_ERROR).

    Sent from the worker's writer thread, possibly after the trial's TrialEnded.
    """

    trial: int
    error: str


@dataclass(frozen=True)
class StoreNotice(WorkerEvent):
    """A line about a store (the tracking server, the study's database) for the parent to show: the
    worker waits for it, it is back, or a write was lost."""

    text: str


@dataclass(frozen=True)
class WritesPending(WorkerEvent):
    """The exiting worker waits for `count` MLflow writes; it gives up in `seconds_left`."""

    count: int
    seconds_left: float


@dataclass(frozen=True)
class WritesLost(WorkerEvent):
    """MLflow writes that never reached the tracking store (tracking.Undelivered.describe() each)."""

    items: list[str]


@dataclass(frozen=True)
class WorkerFree(WorkerEvent):
    """The worker is done with `trial` and waits for the next one."""

    trial: int


# ---------------------------------------------------------------- Optuna's private API


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial."""
    # The public API names trials by number; storages (and Trial objects) by an id kept in _trial_id.
    return trial._trial_id


def get_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    # Study has no lookup of one trial by id; get_trials() would read every trial of the study.
    return study._storage.get_trial(trial_id)


def set_trial_attr(study: optuna.Study, trial_id: int, key: str, value: Any) -> None:
    # FrozenTrial.set_user_attr changes the copy only; the parent writes to trials it holds no Trial of.
    study._storage.set_trial_user_attr(trial_id, key, value)


def open_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The Trial of a trial another process asked for (the parent asks, a worker runs it)."""
    # No public API takes over an asked trial; study.ask() itself builds Trial(study, id).
    study.get_trials(deepcopy=False)  # RDB storages cache trials: refresh so that it knows this one
    return optuna.trial.Trial(study, trial_id)


# ---------------------------------------------------------------- failing a trial, closing a run


def fail_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial, reason: str | None,
               failure: FailureKind) -> None:
    """Record why `trial` failed and tell Optuna FAIL; nothing happens if it finished meanwhile."""
    try:
        if reason:
            set_trial_attr(study, trial_id(trial), ATTR_FAIL_REASON, redact(reason.splitlines()[0]))
            set_trial_attr(study, trial_id(trial), ATTR_FAILURE, failure.value)
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, RuntimeError):
        pass  # someone finished it meanwhile (Optuna refuses to update a finished trial)


def close_run(client: MlflowClient, run_id: str, status: str, state: str | None = None, reason: str | None = None,
              tags: Mapping[str, str] | None = None, metrics: Sequence[Metric] = ()) -> None:
    """Close an MLflow run with `status`: tag the trial `state` it ended in, why it failed, any other
    `tags`, and log last `metrics`. Every run hpsearch ends goes through here."""
    from mlflow.entities import RunTag

    # Tag values may quote errors that quote store URLs (a checkpoint error, a fail reason).
    run_tags = [RunTag(k, redact(v)) for k, v in (tags or {}).items()]
    if state is not None:
        run_tags.append(RunTag(TAG_STATE, state))
    if reason:
        run_tags.append(RunTag(TAG_FAIL_REASON, redact(reason)[:MAX_TAG_CHARS]))
    if run_tags or metrics:
        client.log_batch(run_id, metrics=list(metrics), tags=run_tags)
    client.set_terminated(run_id, status)
