"""The live view of a running search: counts, best value, and what every device slot is doing.

On a terminal it is a table refreshed in place (rich); anywhere else (CI, a file) it prints one plain
line per event, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click

from hpsearch.core.credentials import redact
from hpsearch.core.record_keys import Ended
from hpsearch.core.terminal import escaped
from hpsearch.orchestration.devices import Slot
from hpsearch.orchestration.events import EpochEnded, MemberPaused, TrialEnded, TrialStarted, WorkerEvent


@dataclass
class SlotState:
    label: str
    trial: int | None = None
    epoch: int = 0
    epochs: int = 0
    images_per_second: float | None = None
    value: float | None = None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass
class LiveView:
    metric: str
    direction: str
    n_trials: int
    interactive: bool = field(default_factory=lambda: sys.stdout.isatty())
    counts: dict[str, int] = field(default_factory=lambda: {Ended.COMPLETE: 0, Ended.PRUNED: 0, Ended.FAIL: 0})
    best: float | None = None
    best_trial: int | None = None
    slots: dict[int, SlotState] = field(default_factory=dict)
    _live: Any = None
    _last_refresh: float = 0.0

    def start(self, already: dict[str, int], best: float | None, best_trial: int | None) -> None:
        self.counts.update({k: already.get(k, 0) for k in self.counts})
        self.best, self.best_trial = best, best_trial
        if self.interactive:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=4, transient=False)
            self._live.start()

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None

    # ---- events from the orchestrator
    def _slot(self, slot: Slot) -> SlotState:
        return self.slots.setdefault(slot.index, SlotState(slot.label))

    def assign(self, slot: Slot, trial_number: int) -> None:
        s = self._slot(slot)
        s.trial, s.epoch, s.epochs, s.images_per_second, s.value = trial_number, 0, 0, None, None

    def on_event(self, slot: Slot, event: WorkerEvent) -> None:
        s = self._slot(slot)
        if isinstance(event, TrialStarted):
            s.epochs = event.epochs
            params = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in event.params.items())
            self._line(f"[{s.label}#{slot.index}] trial {event.trial} started: {params}")
        elif isinstance(event, EpochEnded):
            s.epoch, s.epochs = event.epoch, event.epochs
            s.images_per_second, s.value = event.metrics["images_per_second"], event.metrics[self.metric]
            if self._live is not None:
                return  # the table shows the epoch; keep the scrollback to starts and ends
            self._line(
                f"[{s.label}#{slot.index}] trial {event.trial} epoch {s.epoch}/{s.epochs} "
                f"{self.metric}={_fmt(s.value)} {s.images_per_second:,.0f} img/s"
            )
        elif isinstance(event, TrialEnded):
            self.trial_ended(slot, event.trial, event.state, event.value, event.reason)
        elif isinstance(event, MemberPaused):
            s.trial = None
            how = f"copied trial {event.donor}'s weights" if event.donor is not None else "kept its own weights"
            self._line(f"[{s.label}#{slot.index}] trial {event.trial} paused at epoch {event.epoch}/{event.epochs}: "
                       f"{how}")

    def trial_ended(self, slot: Slot, number: int, state: str, value: float | None, reason: str | None) -> None:
        self.counts[state] = self.counts.get(state, 0) + 1
        if state == Ended.COMPLETE and value is not None and self._better(value):
            self.best, self.best_trial = value, number
        s = self._slot(slot)
        s.trial = None
        why = f" ({reason.splitlines()[0]})" if reason else ""
        self._line(f"[{s.label}#{slot.index}] trial {number} {state} {self.metric}={_fmt(value)}{why} — "
                   f"{self._counts_text()}")

    def say(self, text: str, err: bool = False) -> None:
        click.echo(text, err=err)

    def message(self, text: str) -> None:
        self._line(text)

    def checkpoint_failed(self, number: int, error: str) -> None:
        """A trial's checkpoint could not be stored: say so at once, whatever else is on screen."""
        first = (error.strip().splitlines() or ["unknown error"])[0][:300]
        self._line(f"WARNING: trial {number}: checkpoint not stored ({first})")

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.direction == "maximize" else value < self.best

    def _counts_text(self) -> str:
        done = self.counts[Ended.COMPLETE] + self.counts[Ended.PRUNED]
        return (
            f"{done}/{self.n_trials} finished ("
            f"{self.counts[Ended.COMPLETE]} complete, {self.counts[Ended.PRUNED]} pruned, "
            f"{self.counts[Ended.FAIL]} failed), best {self.metric}={_fmt(self.best)}"
            + (f" (trial {self.best_trial})" if self.best_trial is not None else "")
        )

    def _line(self, text: str) -> None:
        text = escaped(redact(text))  # a fail reason may quote a store URL, or hold control characters
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text)

    def refresh(self) -> None:
        if self._live is not None and time.monotonic() - self._last_refresh > 0.25:
            self._live.update(self._table())
            self._last_refresh = time.monotonic()

    def _table(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table()
        for col in ("slot", "device", "trial", "epoch", "img/s", self.metric):
            table.add_column(col)
        for index, s in sorted(self.slots.items()):
            table.add_row(
                str(index),
                Text(s.label),  # a Text is never read as markup
                "-" if s.trial is None else str(s.trial),
                f"{s.epoch}/{s.epochs}" if s.trial is not None else "-",
                "-" if s.images_per_second is None else f"{s.images_per_second:,.0f}",
                _fmt(s.value),
            )
        return Group(Text(self._counts_text()), table)
