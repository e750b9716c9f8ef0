"""Trials that failed from outside themselves (a killed worker, a reaped owner, an interrupt) are asked again with
the same parameters, a bounded number of times.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.record_keys import (
    ATTR_RETRY_OF,
    ATTR_RETRY_REASON,
    CONFIRM_ATTR_PREFIX,
    FailureKind,
)

_ITS_OWN = "its own"
# How many times a configuration is retried after attempts that failed this way (None: until it has run).
RETRIES_ALLOWED: dict[str, int | None] = {
    # The user stopped the run: that says nothing about the configuration.
    FailureKind.INTERRUPTED: None,
    # The run died around it (kill -9, a reboot); a few, for one that takes its whole run down each time.
    FailureKind.REAPED: 3,
    # Any other way (its worker killed, out of memory beside neighbours) may be its own doing: once in all.
    _ITS_OWN: 1,
}


def _configuration(trial: FrozenTrial) -> int:
    """The trial whose configuration `trial` runs: itself, or the first one a retry retries."""
    return trial.user_attrs.get(ATTR_RETRY_OF, trial.number)


def _failure_class(trial: FrozenTrial) -> str:
    kind = trial.user_attrs.get(record_keys.ATTR_FAILURE)
    return kind if kind in RETRIES_ALLOWED else _ITS_OWN


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> bool:
    """Enqueue a retry of a failed trial with the same parameters, unless its configuration is done with.

    A configuration's attempts are read from the study (a finished trial is immutable): its first trial and
    every retry, which carries the first one's number (ATTR_RETRY_OF) and why it was made (ATTR_RETRY_REASON).
    Only the last attempt is retried, and only while each way its attempts failed is within RETRIES_ALLOWED:
    a retry interrupted in turn is retried again, until the configuration has really run.
    """
    first = _configuration(trial)
    attempts = [t for t in study.get_trials(deepcopy=False) if _configuration(t) == first]
    if any(t.number > trial.number for t in attempts):
        return False
    failures = Counter(_failure_class(t) for t in attempts if t.state == TrialState.FAIL)
    if any(allowed is not None and failures[kind] > allowed for kind, allowed in RETRIES_ALLOWED.items()):
        return False
    # What fixed the attempt beside its parameters (a confirmation's seed) goes with it.
    attrs: dict[str, Any] = {k: v for k, v in trial.user_attrs.items() if k.startswith(CONFIRM_ATTR_PREFIX)}
    attrs[ATTR_RETRY_OF] = first
    if reason:
        attrs[ATTR_RETRY_REASON] = reason
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    return True


def retry_candidates(study: optuna.Study) -> list[FrozenTrial]:
    """FAIL trials that died for reasons outside the trial itself (killed, reaped, interrupted), each the last
    attempt at its configuration (enqueue_retry decides whether it has retries left)."""
    trials = study.get_trials(deepcopy=False)
    last = {_configuration(t): t.number for t in sorted(trials, key=lambda t: t.number)}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get(record_keys.ATTR_FAILURE) in record_keys.RETRIED_FAILURES
        and last[_configuration(t)] == t.number
    ]
