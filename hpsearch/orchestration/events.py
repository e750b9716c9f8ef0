"""The typed events a worker process sends to the parent, as (slot index, event).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpsearch.core.record_keys import FailureKind

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
class MemberPaused(WorkerEvent):
    """A population member reached an interval boundary: its checkpoint is stored and its score reported; it goes
    on in a later turn. `donor`: the member it copied there (None: it kept its own weights)."""

    trial: int
    epoch: int
    epochs: int
    donor: int | None


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
