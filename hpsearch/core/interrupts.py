"""Stopping a worker mid-trial: SIGTERM interrupts training at once, never the bookkeeping that closes a trial."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(BaseException):
    """Raised inside a worker when the run is being stopped (Ctrl-C / SIGTERM): the trial ends as FAIL."""


class InterruptGuard:
    """Lets a stop request interrupt training at once, but never the bookkeeping that closes a trial."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False

    def request(self) -> None:
        """Called from the worker's SIGTERM handler."""
        if self.critical:
            self.pending = True
        else:
            raise Interrupted()

    @contextmanager
    def critical_section(self) -> Iterator[None]:
        """A stop request inside the block waits (in `pending`) until the block is done."""
        self.critical = True
        try:
            yield
        finally:
            self.critical = False


GUARD = InterruptGuard()
