"""Waiting for a lock by polling (a non-blocking try, then a short sleep), never in a blocking call: Ctrl-C raises
KeyboardInterrupt while waiting, `should_stop()` (a process whose SIGINT handler only sets a flag) aborts the wait
with LockWaitAborted, and after `timeout` seconds LockTimeout names the lock. `file_lock` is the lock file beside a
local store; the study storage adds PostgreSQL's advisory lock (storage.locks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hpsearch.core.errors import RunFailure

# Holders keep these locks for a moment (count the trials, ask one): ten minutes of waiting means a
# holder that hangs, not a busy study.
LOCK_TIMEOUT_SECONDS = 600.0


_FIRST_POLL = 0.02


_MAX_POLL = 0.25


class LockWaitAborted(Exception):
    """The wait for a lock was given up because `should_stop()` said so (a stop request)."""


class LockTimeout(RunFailure):
    """A lock was not free within its timeout."""


def wait_for_lock(try_once: Callable[[], bool], describe: Callable[[], str], timeout: float,
          should_stop: Callable[[], bool] | None) -> None:
    """Call `try_once()` until it returns True, sleeping a little in between; see the module's doc."""
    deadline = time.monotonic() + timeout
    delay = _FIRST_POLL
    while not try_once():
        if should_stop is not None and should_stop():
            raise LockWaitAborted(f"stopped while waiting for {describe()}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeout(f"gave up after {timeout:g}s waiting for {describe()}: another process has held it "
                              "all that time (a hung hpsearch run?)")
        time.sleep(min(delay, left))
        delay = min(_MAX_POLL, delay * 1.5)


@contextmanager
def file_lock(path: str | Path, timeout: float = LOCK_TIMEOUT_SECONDS,
              should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing); released when the block ends or the process dies."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:

        def try_once() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_for_lock(try_once, lambda: f"the lock file {path}", timeout, should_stop)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
