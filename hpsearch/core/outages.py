"""Riding out a server that is away for a while: the tracking server, its database, the study's database.

One policy for every such call: retry a transient failure with a doubling, jittered backoff
(0.5 s up to 10 s) until the outage has lasted `patience()` seconds (HPSEARCH_OUTAGE_SECONDS,
default 900), then give up with the last error. What is transient is decided by the caller; bad
input (a 4xx answer, a missing run) fails at once, as it would on the first try.

That patience is for a server that answered in this run and then went away. A store that never
answered is given `connect_deadline()` seconds (HPSEARCH_CONNECT_TIMEOUT, default 5) by the
start-up probe (hpsearch.core.store_contact), which is also each connection attempt's own timeout.
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

PATIENCE_ENV = "HPSEARCH_OUTAGE_SECONDS"
DEFAULT_PATIENCE = 900.0
FIRST_DELAY = 0.5
MAX_DELAY = 10.0
CONNECT_ENV = "HPSEARCH_CONNECT_TIMEOUT"
DEFAULT_CONNECT_SECONDS = 5.0


def seconds_from_env(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment variable `name`; `default` if unset or not a number."""
    try:
        return max(0.0, float(os.environ.get(name) or default))
    except ValueError:
        return default


def patience() -> float:
    """How long (seconds) an outage is waited out before a call gives up."""
    return seconds_from_env(PATIENCE_ENV, DEFAULT_PATIENCE)


def connect_deadline() -> float:
    """How long (seconds) a store may take to answer at start-up, and one connection attempt at any time."""
    return seconds_from_env(CONNECT_ENV, DEFAULT_CONNECT_SECONDS)


def delays(first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> Iterator[float]:
    """0.5, 1, 2, 4, 8, 10, 10, … seconds, each with ±20 % jitter so that many clients don't retry in step."""
    delay = first
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(cap, delay * 2)


class GaveUp(Exception):
    """An outage outlasted the patience; `__cause__` is the last error."""


def call_through_outage(fn: Callable[[], T], *, what: str, transient: Callable[[BaseException], bool],
                        wait_for: float | None = None,
                        on_wait: Callable[[str, BaseException, float], object] | None = None,
                        should_stop: Callable[[], bool] = lambda: False) -> T:
    """`fn()`, retried while it fails transiently, for at most `wait_for` seconds (default: patience()).

    `on_wait(what, error, seconds_left)` is called before each wait, so that a waiting process says
    why it waits. `should_stop()` ends the waiting early (a stop request), re-raising the last error.
    """
    budget = patience() if wait_for is None else wait_for
    deadline = time.monotonic() + budget
    for delay in delays():
        try:
            return fn()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not transient(exc) or left <= 0 or should_stop():
                if transient(exc) and left <= 0:
                    raise GaveUp(f"{what}: still failing after {budget:.0f}s: {first_line(exc)}") from exc
                raise
            if on_wait is not None:
                on_wait(what, exc, left)
            time.sleep(min(delay, max(0.0, left)))
    raise AssertionError("unreachable: delays() never ends")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class OutageNotice:
    """Says that this process waits for a server: once, then at most every EVERY_SECONDS, and when
    it is back. `say(what, error, seconds_left)` and `back(what, seconds)` word the lines; `sink`
    takes them (stderr, or a worker's event queue)."""

    EVERY_SECONDS = 10.0

    def __init__(self, say: Callable[[str, BaseException, float], str], back: Callable[[str, float], str]):
        from hpsearch.core.credentials import redact  # a waiting line may quote a URL

        self.say, self.back = say, back
        self.sink: Callable[[str], None] = lambda text: print(redact(text), file=sys.stderr, flush=True)
        self._last = float("-inf")
        self._lock = threading.Lock()

    def waiting(self, what: str, exc: BaseException, seconds_left: float) -> bool:
        """Show the line unless one was shown in the last EVERY_SECONDS; returns whether it was."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.EVERY_SECONDS:
                return False
            self._last = now
        self.sink(self.say(what, exc, seconds_left))
        return True

    def call(self, fn: Callable[[], T], *, what: str, transient: Callable[[BaseException], bool],
             wait_for: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> T:
        """call_through_outage(fn, …), saying that it waits and, if it said so, when the server is back."""
        shown = False

        def on_wait(label: str, exc: BaseException, seconds_left: float) -> None:
            nonlocal shown
            shown = self.waiting(label, exc, seconds_left) or shown

        started = time.monotonic()
        result = call_through_outage(fn, what=what, transient=transient, wait_for=wait_for, on_wait=on_wait,
                                     should_stop=should_stop)
        if shown:
            self.sink(self.back(what, time.monotonic() - started))
        return result


def short_reason(exc: BaseException) -> str:
    """Why the store could not be reached, in a few words (requests' own text runs to several hundred)."""
    text = str(exc)
    answered = re.search(r"too many (\d{3}) error responses", text)
    if answered:  # the server is up, its own store is not (MLflow's client retried its 5xx answers)
        return f"the server answered {answered.group(1)}"
    for needle, said in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("Name or service not known", "unknown host"), ("Connection reset", "connection reset"),
                         ("RemoteDisconnected", "connection closed by the server")):
        if needle in text:
            return said
    return first_line(exc)[:200]
