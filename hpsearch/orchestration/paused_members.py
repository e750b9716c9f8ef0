"""Where a population's paused members wait: their checkpoints (engine/pause.py states) on local disk, within a
size budget, each deleted as soon as no member can still use it.

A member's checkpoint at epoch e is still of use while the member has not gone past it (it resumes from it), or
while another member has not yet reached e (at e that member may copy it, PBT's exploit). Everything else goes
at once, so a long population run holds about one checkpoint per member, not one per member per interval
(the disk filling up is what Ray Tune's PBT users most often report).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hpsearch.core.errors import RunFailure
from hpsearch.engine import pause

_NAME = re.compile(r"member-(\d+)-epoch-(\d+)\.pt")


def still_needed(checkpoints: set[tuple[int, int]], reached: dict[int, int],
                 finished: frozenset[int] = frozenset()) -> set[tuple[int, int]]:
    """Of the (member, epoch) checkpoints, those some member can still use, given the epoch each member has
    reached ({member: epochs trained}; a finished member's count is the study's epochs) and the members that
    have finished (or failed): they resume from nothing."""
    slowest = min((e for m, e in reached.items() if m not in finished), default=None)
    latest = {m: max((e for mm, e in checkpoints if mm == m), default=-1) for m, _ in checkpoints}
    # Its latest: the member resumes from it (after a pause, or when the worker training it dies). Past the
    # slowest member still training: that one may still copy it when it gets there.
    return {(m, e) for m, e in checkpoints
            if (e == latest[m] and m not in finished) or (slowest is not None and e > slowest)}


class PausedMembers:
    """Paused members' checkpoints in `folder`, at most `budget_bytes` of them on disk."""

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder, self.budget_bytes = folder, budget_bytes
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, member: int, epoch: int) -> Path:
        return self.folder / f"member-{member}-epoch-{epoch}.pt"

    def stored(self) -> set[tuple[int, int]]:
        found = (_NAME.fullmatch(p.name) for p in self.folder.iterdir())
        return {(int(m[1]), int(m[2])) for m in found if m}

    def size(self) -> int:
        return sum(self.path(m, e).stat().st_size for m, e in self.stored())

    def keep(self, member: int, epoch: int, state: dict[str, Any], reached: dict[int, int],
             finished: frozenset[int] = frozenset()) -> Path:
        """Store `member`'s state after `epoch`, then delete what nobody can use any more. Over the budget even
        then: RunFailure, one line naming it (the checkpoints stay, so stopping there loses nothing)."""
        path = pause.save(state, self.path(member, epoch))  # first: a member is never without a checkpoint
        self.release({**reached, member: epoch}, finished)
        used = self.size()
        if used > self.budget_bytes:  # what is kept stays: the run stops, nothing is lost
            raise RunFailure(f"paused members need {used / 1e6:.1f} MB, over study.scheduler's checkpoint budget of "
                             f"{self.budget_bytes / 1e6:.1f} MB: raise checkpoint_budget_mb or lower the population")
        return path

    def load(self, member: int, epoch: int) -> dict[str, Any]:
        return pause.load(self.path(member, epoch))

    def release(self, reached: dict[int, int], finished: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
        """Delete the checkpoints no member can still use; returns them."""
        stored = self.stored()
        gone = sorted(stored - still_needed(stored, reached, finished))
        for member, epoch in gone:
            self.path(member, epoch).unlink(missing_ok=True)
        return gone
