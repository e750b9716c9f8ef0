"""Trial states as the study sees them: which count as finished, how many trials are in each, the Pareto front.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what the study's budget (n_trials) counts


def finished_count(counts: dict[TrialState, int]) -> int:
    """How many trials of `count_states(study)` count towards the budget."""
    return sum(counts[s] for s in FINISHED)


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """A multi-objective study's complete trials that no other beats in every objective, by trial number
    (Optuna's best_trials; for one objective, the best trial)."""
    if not count_states(study)[TrialState.COMPLETE]:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts
