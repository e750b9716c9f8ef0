"""MLflow writes off the training loop: a worker's writes go through one background thread, ridden through
outages; what never reaches the store is kept on disk and named (Undelivered), never dropped silently.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpsearch.core import locations
from hpsearch.core.outages import GaveUp, first_line, seconds_from_env, short_reason
from hpsearch.tracking.checkpoints import CHECKPOINT_FILE
from hpsearch.tracking.mlflow_client import OUTAGE_NOTICE, through_outage, unreachable

# Where a checkpoint that could not be delivered is kept: <folder>/<run id>/model.pt, under the run's folder.
UNDELIVERED_DIR = locations.UNDELIVERED_DIR

DRAIN_ENV = "HPSEARCH_DRAIN_SECONDS"
DEFAULT_DRAIN_SECONDS = 60.0


def drain_seconds() -> float:
    """How long a process waits at exit for its undelivered MLflow writes."""
    return seconds_from_env(DRAIN_ENV, DEFAULT_DRAIN_SECONDS)


@dataclass(frozen=True)
class Undelivered:
    """A write that never reached the tracking store: what it was, why, and where a local copy is kept."""

    what: str
    error: str
    kept_at: str | None = None

    def describe(self) -> str:
        kept = f"; kept at {self.kept_at}" if self.kept_at else ""
        return f"{self.what} ({self.error}{kept})"


@dataclass
class _Write:
    what: str  # for messages: "trial 3 epoch 2 metrics"
    run: Callable[[], object]
    # When the write is lost: keep what it carried (returns where) and/or hear why.
    keep: Callable[[], str | None] | None = None
    on_lost: Callable[[str], None] | None = None


class _BackgroundWriter:
    """One daemon thread per process that runs queued MLflow writes in order, off the training path.

    Each write rides out an outage of the tracking store. A write that still fails (the outage
    outlasted HPSEARCH_OUTAGE_SECONDS, the exit deadline passed, or the store refused it) is
    recorded as undelivered, with a local copy of a checkpoint, and shown at once.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[_Write] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._give_up_at: float | None = None
        self._store_down = False  # the last write was lost to an outage after the exit deadline
        self.lost: list[Undelivered] = []

    def submit(self, write: _Write) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hpsearch-mlflow-writer", daemon=True)
                self._thread.start()
        self._queue.put(write)

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def _past_deadline(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _loop(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if self._store_down and self._past_deadline():
                    raise TimeoutError("the tracking store was still unreachable when the run ended")
                through_outage(write.run, write.what, should_stop=self._past_deadline)
                self._store_down = False
            except Exception as exc:  # recorded and shown, never raised: training goes on
                self._store_down = unreachable(exc) or isinstance(exc, (TimeoutError, GaveUp))
                self._lose(write, exc)
            finally:
                self._queue.task_done()

    def _lose(self, write: _Write, exc: Exception) -> None:
        cause = exc.__cause__ if isinstance(exc, GaveUp) and exc.__cause__ is not None else exc
        error = f"tracking store unreachable: {short_reason(cause)}" if unreachable(cause) else first_line(exc)
        kept = None
        if write.keep is not None:
            try:
                kept = write.keep()
            except Exception as keep_error:  # the disk failed too: say so, it is the last copy
                error = f"{error}; keeping a local copy failed too: {first_line(keep_error)}"
        item = Undelivered(write.what, error, kept)
        with self._lock:
            self.lost.append(item)
        if write.on_lost is not None:
            write.on_lost(error)
        else:
            OUTAGE_NOTICE.sink(f"WARNING: not delivered to MLflow: {item.describe()}")

    def wait_idle(self) -> None:
        """Wait until the queued writes are delivered or lost (keeping the lost ones for drain)."""
        self._queue.join()

    def drain(self, seconds: float | None = None,
              on_tick: Callable[[int, float], None] | None = None) -> list[Undelivered]:
        """Wait until every queued write is delivered or lost; returns (and forgets) the lost ones.

        With `seconds`, writes still waiting for the store after that long give up (see _loop), and
        `on_tick(writes left, seconds left)` is called every ~5 s while writes wait.
        """
        if seconds is None:
            self._queue.join()
        else:
            self._give_up_at = time.monotonic() + seconds
            last_tick = time.monotonic()
            try:
                while self.pending():
                    time.sleep(0.05)
                    now = time.monotonic()
                    if on_tick is not None and now - last_tick >= 5.0 and self.pending():
                        last_tick = now
                        on_tick(self.pending(), max(0.0, self._give_up_at - now))
            finally:
                self._give_up_at = None
                self._store_down = False
        with self._lock:
            lost, self.lost = self.lost, []
        return lost


_WRITER = _BackgroundWriter()


def submit(what: str, job: Callable[[], object]) -> None:
    """Queue one MLflow write on this process's writer thread (delivered in order, through outages)."""
    _WRITER.submit(_Write(what, job))


def drain(seconds: float | None = None, on_tick: Callable[[int, float], None] | None = None) -> list[Undelivered]:
    """Wait for this process's queued MLflow writes (a worker does this before exiting).

    Without `seconds`, until all are delivered or lost; returns the lost ones.
    """
    return _WRITER.drain(seconds, on_tick)


def undelivered_checkpoint(run_id: str, name: str = CHECKPOINT_FILE) -> Path:
    """Where a run's checkpoint is kept when it could not be delivered (relative to the run's folder)."""
    return UNDELIVERED_DIR / run_id / name
