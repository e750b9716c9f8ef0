"""The parent's side of population-based training: members take turns on the worker slots.

A worker asks for work by being idle; it gets the member furthest behind (fewest epochs), preferring the one it
trained last (it may still hold it in memory), and a new member while the population is not complete. A member
is claimed under the budget lock, so that two runs of the study (two machines on one PostgreSQL study) never take
the same one. A member is claimable while it is paused (no worker holds it) or while its owner is gone (a killed
run): it goes on from its latest checkpoint, and what it trained since is trained again and counted so
(ATTR_PBT_RETRIED). A member whose worker dies is paused, never failed or retried as a new trial, so the
population keeps its size and the study its exact epoch budget.
"""

from __future__ import annotations

import time

from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.record_keys import FailureKind
from hpsearch.orchestration.member import members
from hpsearch.orchestration.orchestrator import Orchestrator, WorkerHandle
from hpsearch.search import trial_access
from hpsearch.storage import locks, ownership


class PopulationOrchestrator(Orchestrator):
    """Runs a population-based study (study.scheduler: pbt): its members' turns instead of whole trials."""

    @property
    def population(self) -> int:
        assert self.spec.study.scheduler is not None
        return self.spec.study.scheduler.population

    def _held_here(self) -> set[int]:
        return {h.trial_id for h in self.workers.values() if h.trial_id is not None}

    def _claimable(self, trial: FrozenTrial, busy: set[int]) -> bool:
        if trial.state != TrialState.RUNNING or trial_access.trial_id(trial) in busy:
            return False
        return bool(trial.user_attrs.get(record_keys.ATTR_PBT_PAUSED)) or not ownership.owner_is_alive(trial)

    def _budget_left(self) -> tuple[bool, bool]:
        population = members(self.study)
        if sum(t.state.is_finished() for t in population) >= self.population:
            return True, False
        busy = self._held_here()
        return False, len(population) < self.population or any(self._claimable(t, busy) for t in population)

    def _dispatch_idle(self, may_start: bool) -> None:
        for handle in self.workers.values():
            if not (handle.ready and handle.trial_id is None and may_start):
                continue
            with locks.budget_lock(self.storage_url, self.study.study_name, should_stop=lambda: self.stop_requested):
                may_start = self._dispatch_member(handle)

    def _dispatch_member(self, handle: WorkerHandle) -> bool:
        """Give `handle` its next member (under the budget lock); False when none can go now."""
        population = members(self.study)
        slot = {record_keys.ATTR_SLOT: f"{handle.slot.label} #{handle.slot.index}"}
        claim = ownership.owner_attrs() | slot | {record_keys.ATTR_PBT_PAUSED: False,
                                                  record_keys.ATTR_HEARTBEAT: time.time()}
        if len(population) < self.population:  # a new member: the study's sampler draws its start in the worker
            trial = self.study.ask()
            for key, value in (claim | {record_keys.ATTR_PBT_MEMBER: True, record_keys.ATTR_PBT_EPOCH: 0}).items():
                trial.set_user_attr(key, value)
            trial_id, number = trial_access.trial_id(trial), trial.number
        else:
            busy = self._held_here()
            waiting = [t for t in population if self._claimable(t, busy)]
            if not waiting:
                return False
            chosen = min(waiting, key=lambda t: (int(t.user_attrs.get(record_keys.ATTR_PBT_EPOCH, 0)),
                                                 trial_access.trial_id(t) != handle.last_trial_id, t.number))
            trial_id, number = trial_access.trial_id(chosen), chosen.number
            if not chosen.user_attrs.get(record_keys.ATTR_PBT_PAUSED):
                self.live.message(f"trial {number}: its run is gone; it goes on from its checkpoint at epoch "
                                  f"{chosen.user_attrs.get(record_keys.ATTR_PBT_EPOCH, 0)}")
            for key, value in claim.items():
                trial_access.set_trial_attr(self.study, trial_id, key, value)
        handle.trial_id, handle.trial_number = trial_id, number
        handle.tasks.put(trial_id)
        self.live.assign(handle.slot, number)
        return True  # the next idle worker looks again, under the lock

    def _fail_orphan(self, handle: WorkerHandle, reason: str, failure: FailureKind) -> None:
        """A member whose worker died, or was stopped, is paused at its latest checkpoint: never failed."""
        trial_id = handle.trial_id
        assert trial_id is not None, "only a busy worker holds a member"
        frozen = trial_access.get_trial(self.study, trial_id)
        if frozen.state == TrialState.RUNNING:
            trial_access.set_trial_attr(self.study, trial_id, record_keys.ATTR_PBT_PAUSED, True)
            if not self.stop_requested:
                epoch = frozen.user_attrs.get(record_keys.ATTR_PBT_EPOCH, 0)
                self.live.message(f"trial {frozen.number}: {reason}; it goes on from its checkpoint at epoch {epoch}")
        handle.last_trial_id = handle.trial_id
        handle.trial_id = handle.trial_number = None

    def _retry_oom_beside_neighbours(self, handle: WorkerHandle) -> None:
        """A member that ran out of memory has failed: a retry would be a new member, and the population is set."""
