"""An orchestrator that runs only the trials enqueued in its study and never asks the sampler for one: a
confirmation's retrainings (results/confirmation.py), each a configuration and a training seed fixed beforehand.

Everything else is the parent's as for a search: the slots, dead workers and their trials retried with the same
parameters and attributes, Ctrl-C and resume, several runs on one study.
"""

from __future__ import annotations

from optuna.trial import TrialState

from hpsearch.orchestration.orchestrator import Orchestrator
from hpsearch.search import trial_states


class QueuedTrialsOrchestrator(Orchestrator):
    """Done when no enqueued trial waits and none runs; a trial starts only while one waits."""

    def _budget_left(self) -> tuple[bool, bool]:
        counts = trial_states.count_states(self.study)
        waiting = counts[TrialState.WAITING]
        return waiting == 0 and counts[TrialState.RUNNING] == 0, waiting > 0
