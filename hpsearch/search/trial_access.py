"""Reading and writing single trials: every call into Optuna's private API sits here, each behind a small
function, so that the `optuna<6` pin has one place to check; and `fail_trial`, the one way a trial is failed.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core.credentials import redact
from hpsearch.core.record_keys import ATTR_FAIL_REASON, ATTR_FAILURE, FailureKind

# ---------------------------------------------------------------- Optuna's private API


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial."""
    # The public API names trials by number; storages (and Trial objects) by an id kept in _trial_id.
    return trial._trial_id


def get_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    # Study has no lookup of one trial by id; get_trials() would read every trial of the study.
    return study._storage.get_trial(trial_id)


def set_trial_attr(study: optuna.Study, trial_id: int, key: str, value: Any) -> None:
    # FrozenTrial.set_user_attr changes the copy only; the parent writes to trials it holds no Trial of.
    study._storage.set_trial_user_attr(trial_id, key, value)


def open_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The Trial of a trial another process asked for (the parent asks, a worker runs it)."""
    # No public API takes over an asked trial; study.ask() itself builds Trial(study, id).
    study.get_trials(deepcopy=False)  # RDB storages cache trials: refresh so that it knows this one
    return optuna.trial.Trial(study, trial_id)


# ---------------------------------------------------------------- failing a trial, closing a run


def fail_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial, reason: str | None,
               failure: FailureKind) -> None:
    """Record why `trial` failed and tell Optuna FAIL; nothing happens if it finished meanwhile."""
    try:
        if reason:
            set_trial_attr(study, trial_id(trial), ATTR_FAIL_REASON, redact(reason.splitlines()[0]))
            set_trial_attr(study, trial_id(trial), ATTR_FAILURE, failure.value)
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, RuntimeError):
        pass  # someone finished it meanwhile (Optuna refuses to update a finished trial)
