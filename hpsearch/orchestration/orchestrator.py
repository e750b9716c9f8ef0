"""The parent of a run: it asks Optuna for trials under the budget lock, hands them to worker slots, watches the
workers (restarting one that dies, retrying its trial), and stops them cleanly on an interrupt.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.errors import RunFailure
from hpsearch.core.lock_waits import LockWaitAborted
from hpsearch.core.record_keys import Ended, FailureKind
from hpsearch.orchestration.devices import Slot
from hpsearch.orchestration.events import (
    CheckpointFailed,
    StoreNotice,
    TrialEnded,
    WorkerEvent,
    WorkerFatal,
    WorkerFree,
    WorkerReady,
    WorkerRetiring,
    WritesLost,
    WritesPending,
)
from hpsearch.orchestration.progress import Progress
from hpsearch.orchestration.worker import worker_main
from hpsearch.search import trial_access, trial_states
from hpsearch.spec.spec_types import Spec
from hpsearch.storage import db_outages, locks, ownership, retries
from hpsearch.tracking import study_runs

# ------------------------------------------------------------------------------------------ parent


def reap_and_close(study: optuna.Study, tracking_uri: str) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose owner is gone and close their MLflow runs as KILLED."""
    reaped = ownership.reap_orphans(study)
    for t in reaped:
        run_id = t.user_attrs.get(record_keys.ATTR_RUN_ID)
        if run_id:
            study_runs.close_killed_run(tracking_uri, run_id, "its worker process was gone")
    return reaped


@dataclass
class WorkerHandle:
    slot: Slot
    process: Any
    tasks: Any  # the worker's queue of trial ids
    ready: bool = False
    trial_id: int | None = None
    trial_number: int | None = None
    deaths_before_ready: int = 0
    last_trial_id: int | None = None  # the trial it ran last (a population member it may still hold in memory)


@dataclass
class RunSummary:
    finished: int
    complete: int
    pruned: int
    failed: int
    interrupted: bool
    timed_out: bool
    seconds: float
    best_value: float | None = None
    best_trial: int | None = None
    pareto_front: list[int] = field(default_factory=list)  # a multi-objective study's best trials
    checkpoints_lost: list[int] = field(default_factory=list)  # trials whose checkpoint could not be stored
    undelivered: list[str] = field(default_factory=list)  # MLflow writes that never reached the store


class Orchestrator:
    """Runs a study's remaining budget on a set of device slots."""

    POLL_SECONDS = 0.2
    STOP_GRACE_SECONDS = 15.0
    MAX_START_FAILURES = 3
    MIN_FAILURES_IN_A_ROW = 5

    def __init__(self, spec: Spec, study: optuna.Study, slots: list[Slot], storage_url: str | None,
                 tracking_uri: str, experiment_id: str, parent_run_id: str, live: Progress):
        self.spec = spec
        self.study = study
        self.slots = slots
        self.storage_url = storage_url
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.live = live
        self.mp_context = mp.get_context("spawn")
        self.events = self.mp_context.Queue()
        self.workers: dict[int, WorkerHandle] = {}
        self.stop_requested = False
        self.hard_stop = False
        self.fatal: str | None = None
        self.failures_in_a_row = 0
        self.last_beat = time.monotonic()
        self.checkpoints_lost: list[int] = []
        self.undelivered: list[str] = []
        self.stop_deadline = 0.0  # while stopping: when workers still alive are killed

    # ---- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            self.hard_stop = True
        self.stop_requested = True

    # ---- workers
    def _spawn(self, slot: Slot, deaths_before_ready: int = 0) -> WorkerHandle:
        tasks = self.mp_context.Queue()
        env = slot.env()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a spawned child inherits the environment at start
        try:
            proc = self.mp_context.Process(
                target=worker_main,
                name=f"hpsearch-worker-{slot.index}",
                args=(slot, self.spec, self.storage_url, self.tracking_uri, self.experiment_id, self.parent_run_id,
                      tasks, self.events),
                # Not a daemon: a daemon may not start children, and image folders are decoded by
                # DataLoader processes. The orchestrator reaps its workers itself (run's finally,
                # and the death signal each worker asks for).
                daemon=False,
            )
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        handle = WorkerHandle(slot, proc, tasks, deaths_before_ready=deaths_before_ready)
        self.workers[slot.index] = handle
        return handle

    def _budget_left(self) -> tuple[bool, bool]:
        """(done, may_start): done when the budget is met; may_start when one more trial fits it."""
        counts = trial_states.count_states(self.study)
        finished = trial_states.finished_count(counts)
        if finished >= self.spec.study.n_trials:
            return True, False
        return False, finished + counts[TrialState.RUNNING] < self.spec.study.n_trials

    def _dispatch(self, handle: WorkerHandle) -> None:
        trial = self.study.ask()
        slot = {record_keys.ATTR_SLOT: f"{handle.slot.label} #{handle.slot.index}"}  # the report's timeline rows
        for key, value in (ownership.owner_attrs() | slot).items():
            trial.set_user_attr(key, value)
        handle.trial_id, handle.trial_number = trial_access.trial_id(trial), trial.number
        handle.tasks.put(handle.trial_id)
        self.live.assign(handle.slot, trial.number)

    def _dispatch_idle(self, may_start: bool) -> None:
        """Hand a new trial to each idle worker while the budget allows (under the budget lock)."""
        for handle in self.workers.values():
            if handle.ready and handle.trial_id is None and may_start:
                with locks.budget_lock(self.storage_url, self.study.study_name,
                                           should_stop=lambda: self.stop_requested):
                    _done, may_start = self._budget_left()  # fresh, under the lock
                    if may_start:
                        self._dispatch(handle)

    def _fail_orphan(self, handle: WorkerHandle, reason: str, failure: FailureKind) -> None:
        """The worker died with a trial in hand: fail it, close its run, retry it once."""
        trial_id = handle.trial_id
        assert trial_id is not None, "only a busy worker has a trial to fail"
        frozen = trial_access.get_trial(self.study, trial_id)
        if frozen.state == TrialState.RUNNING:
            trial_access.fail_trial(self.study, frozen, reason, failure)
            run_id = frozen.user_attrs.get(record_keys.ATTR_RUN_ID)
            if run_id:
                study_runs.close_killed_run(self.tracking_uri, run_id, reason)
            frozen = trial_access.get_trial(self.study, trial_id)
            if not self.stop_requested and retries.enqueue_retry(self.study, frozen):
                self.live.message(f"trial {frozen.number} will be retried once with the same parameters")
            self.live.trial_ended(handle.slot, frozen.number, Ended.FAIL, None, reason)
        handle.trial_id = handle.trial_number = None

    def _check_dead(self) -> None:
        for index, handle in list(self.workers.items()):
            code = handle.process.exitcode
            if code is None:
                continue
            if handle.trial_id is not None:
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                reason = f"worker process died ({how}) on {handle.slot.label}"
                self.live.message(f"slot {index}: {reason} during trial {handle.trial_number}")
                self._fail_orphan(handle, reason, FailureKind.KILLED)
                self._count_outcome(Ended.FAIL, reason)
            del self.workers[index]
            if self.stop_requested:
                continue
            deaths = 0 if handle.ready else handle.deaths_before_ready + 1
            if deaths >= self.MAX_START_FAILURES:
                raise RunFailure(
                    f"the worker for slot {index} ({handle.slot.label}) died {deaths} times before it was ready; "
                    "see its error above"
                )
            self._spawn(handle.slot, deaths)

    def _handle_event(self, index: int, event: WorkerEvent) -> None:
        handle = self.workers.get(index)
        if isinstance(event, WorkerReady) and handle is not None:
            handle.ready = True
        elif isinstance(event, WorkerFatal):
            self.fatal = event.message
            self.stop_requested = True
        elif isinstance(event, TrialEnded):
            if event.failure is FailureKind.OOM and handle is not None:
                self._retry_oom_beside_neighbours(handle)
            self._count_outcome(event.state, event.reason)
        elif isinstance(event, CheckpointFailed):  # shown even if its worker has gone meanwhile
            self.checkpoints_lost.append(event.trial)
            self.live.checkpoint_failed(event.trial, event.error)
        elif isinstance(event, StoreNotice):
            self.live.message(f"slot {index}: {event.text}")
        elif isinstance(event, WritesPending):
            self.live.message(f"slot {index}: {event.count} MLflow write(s) still waiting for the tracking store; "
                              f"giving up in {event.seconds_left:.0f}s")
            # An exiting worker that is still delivering gets the time it asked for.
            self.stop_deadline = max(self.stop_deadline, time.monotonic() + event.seconds_left + 10.0)
        elif isinstance(event, WritesLost):
            self.undelivered.extend(event.items)
        elif isinstance(event, WorkerRetiring) and handle is not None:
            self.live.message(f"slot {index}: {event.reason}; starting a fresh worker process")
        elif isinstance(event, WorkerFree) and handle is not None and handle.trial_number == event.trial:
            handle.last_trial_id = handle.trial_id
            handle.trial_id = handle.trial_number = None
        if handle is not None:
            self.live.on_event(handle.slot, event)

    def _retry_oom_beside_neighbours(self, handle: WorkerHandle) -> None:
        """Out of memory while other trials shared the GPU may be their doing: retry it once."""
        neighbours = [h for h in self.workers.values()
                      if h is not handle and h.slot.gpu is not None and h.slot.gpu == handle.slot.gpu
                      and h.trial_id is not None]
        if not neighbours or handle.trial_id is None or self.stop_requested:
            return
        frozen = trial_access.get_trial(self.study, handle.trial_id)
        reason = (f"out of memory on {handle.slot.label} while {len(neighbours)} other trial(s) shared it; "
                  "retried once with the same parameters")
        if frozen.state == TrialState.FAIL and retries.enqueue_retry(self.study, frozen, reason):
            self.live.message(f"trial {frozen.number}: {reason}")

    def _count_outcome(self, state: str, reason: str | None) -> None:
        """Every trial failing in a row means a broken setup, not bad luck: stop instead of spinning."""
        if state != Ended.FAIL:
            self.failures_in_a_row = 0
            return
        self.failures_in_a_row += 1
        limit = max(self.MIN_FAILURES_IN_A_ROW, 2 * len(self.slots))
        if self.failures_in_a_row >= limit and not self.stop_requested:
            last = (reason or "unknown").splitlines()[0]
            self.fatal = f"stopped after {self.failures_in_a_row} trials in a row failed; the last: {last}"
            self.stop_requested = True

    def _drain_events(self, timeout: float) -> None:
        try:
            index, event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle_event(index, event)
        while True:
            try:
                index, event = self.events.get_nowait()
            except queue.Empty:
                return
            self._handle_event(index, event)

    def _keep_alive(self, busy: list[WorkerHandle], may_start: bool) -> None:
        """Beat the heartbeat of our trials; when waiting on others' trials, reap the dead ones."""
        now = time.monotonic()
        if now - self.last_beat < ownership.HEARTBEAT_SECONDS:
            return
        self.last_beat = now
        ownership.beat(self.study, [h.trial_id for h in busy if h.trial_id is not None])
        if not may_start:  # the budget waits on RUNNING trials: some may belong to a dead machine
            # Under the budget lock: two runs reaping the same trial must not both enqueue its retry.
            try:
                with locks.budget_lock(self.storage_url, self.study.study_name,
                                           should_stop=lambda: self.stop_requested):
                    for t in reap_and_close(self.study, self.tracking_uri):
                        self.live.message(f"trial {t.number}: its owner is gone; marked FAIL")
                        retries.enqueue_retry(self.study, t)
            except LockWaitAborted:
                return

    def _stop_workers(self) -> None:
        """Stop every worker: idle ones are told to exit, busy ones get SIGTERM and fail their trial."""
        for handle in self.workers.values():
            if handle.trial_id is None:
                handle.tasks.put(None)
            elif handle.process.is_alive():
                os.kill(handle.process.pid, signal.SIGTERM)
        self.stop_deadline = time.monotonic() + self.STOP_GRACE_SECONDS
        while any(h.process.is_alive() for h in self.workers.values()):
            if self.hard_stop or time.monotonic() > self.stop_deadline:
                break
            self._drain_events(self.POLL_SECONDS)
        self._drain_events(0.05)
        for handle in self.workers.values():
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(5)
            if handle.trial_id is not None:
                frozen = trial_access.get_trial(self.study, handle.trial_id)
                if frozen.state == TrialState.RUNNING:
                    reason = "interrupted: the run was stopped (Ctrl-C or SIGTERM)"
                    self._fail_orphan(handle, reason, FailureKind.INTERRUPTED)
        self.workers.clear()

    def run(self, timeout: float | None) -> RunSummary:
        started = time.monotonic()
        timed_out = False
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._on_signal)
        db_outages.stop_waiting_when(lambda: self.hard_stop)  # a second Ctrl-C ends a wait for the database
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not self.stop_requested:
                self._check_dead()
                done, may_start = self._budget_left()
                busy = [h for h in self.workers.values() if h.trial_id is not None]
                if done and not busy:
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                    if not busy:
                        break
                else:
                    try:
                        self._dispatch_idle(may_start)
                    except LockWaitAborted:  # Ctrl-C while another run held the budget lock
                        break
                self._drain_events(self.POLL_SECONDS)
                self._keep_alive(busy, may_start)
                self.live.refresh()
            interrupted = self.stop_requested and self.fatal is None
        finally:
            # Also on an error: workers are not daemons, and none may outlive the run.
            self._stop_workers()
            db_outages.stop_waiting_when(None)
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.fatal:
            raise RunFailure(self.fatal)
        counts = trial_states.count_states(self.study)
        summary = RunSummary(
            finished=trial_states.finished_count(counts),
            complete=counts[TrialState.COMPLETE],
            pruned=counts[TrialState.PRUNED],
            failed=counts[TrialState.FAIL],
            interrupted=interrupted,
            timed_out=timed_out,
            seconds=time.monotonic() - started,
            checkpoints_lost=sorted(set(self.checkpoints_lost)),
            undelivered=list(self.undelivered),
        )
        if counts[TrialState.COMPLETE] and len(self.study.directions) > 1:
            summary.pareto_front = [t.number for t in trial_states.pareto_front(self.study)]
        elif counts[TrialState.COMPLETE]:
            best = self.study.best_trial
            summary.best_value, summary.best_trial = best.value, best.number
        return summary
