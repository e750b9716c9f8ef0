"""What a run tells the person watching it, as a protocol: the orchestration layer never imports click or rich.

The command line implements it (cli.live.LiveView: a live table on a terminal, plain lines otherwise); a test
or another front end may implement it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hpsearch.orchestration.devices import Slot
    from hpsearch.orchestration.events import WorkerEvent


class Progress(Protocol):
    def say(self, text: str, err: bool = False) -> None:
        """One line of the run's own (created/resumed, the summary), before or after the live view."""

    def start(self, already: dict[str, int], best: float | None, best_trial: int | None) -> None:
        """The run starts its trials: `already` counts finished trials by state name."""

    def close(self) -> None:
        """The run's trials are over (or it was stopped)."""

    def assign(self, slot: Slot, trial_number: int) -> None:
        """A slot's worker was handed a trial."""

    def on_event(self, slot: Slot, event: WorkerEvent) -> None:
        """A worker's event (trial started, epoch ended, trial ended)."""

    def trial_ended(self, slot: Slot, number: int, state: str, value: float | None, reason: str | None) -> None:
        """A trial ended in the parent's hands (its worker died)."""

    def message(self, text: str) -> None:
        """A line about the run while the live view shows (a retry, a store outage)."""

    def checkpoint_failed(self, number: int, error: str) -> None:
        """A trial's checkpoint could not be stored."""

    def refresh(self) -> None:
        """A chance to redraw (called a few times a second)."""
