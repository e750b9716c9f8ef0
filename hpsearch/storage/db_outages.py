"""Riding out an outage of the study's database (a PostgreSQL restart, a failover, a network blip).

`OutageProofStorage` wraps Optuna's RDB storage so that every call — from `Study.ask`/`tell`/`report`,
the samplers, the pruners and hpsearch's own bookkeeping, in the parent and in the workers — is
retried through hpsearch.core.outages while the failure is a lost or refused connection. Anything else
(a missing study, a finished trial, bad input) fails at once, as before, and so does a connection
the server answered with a refusal that waiting cannot change (`refusal`: a wrong password, a role
or database that does not exist, a bad connection option).

A retried write may already have committed (the server went away after the commit, before the
reply). Most writes here are upserts and harmless to repeat; the two that are not are made safe:
creating a trial carries a token, so that a retry finds the trial its lost reply created instead of
adding a second one; and telling a state that is already there is taken as done.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core.credentials import mask_url
from hpsearch.core.db_errors import cause_line, driver_reason, is_transient, refusal
from hpsearch.core.errors import RunFailure
from hpsearch.core.outages import GaveUp, OutageNotice, patience
from hpsearch.search import trial_access

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy

T = TypeVar("T")

# The system attribute a new trial carries so that a retried create finds it (see create_new_trial).
CREATE_TOKEN_ATTR = "hpsearch:create_token"


class DatabaseUnreachable(GaveUp, RunFailure):
    """The database stayed unreachable longer than HPSEARCH_OUTAGE_SECONDS (a RunFailure: one clean line)."""


class DatabaseRefused(RunFailure):
    """The database, reachable earlier in this run, now refuses the connection for good (see refusal)."""


_NOTICE = OutageNotice(
    lambda what, exc, seconds_left: (
        f"waiting for the database ({what}): {cause_line(exc)}; giving up in {seconds_left:.0f}s"),
    lambda what, seconds: f"the database is back ({what}) after {seconds:.0f}s",
)
_stop_check: Callable[[], bool] | None = None


def report_outages_to(sink: Callable[[str], None]) -> None:
    """Where this process's "waiting for the database" lines go (stderr by default)."""
    _NOTICE.sink = sink


def stop_waiting_when(check: Callable[[], bool] | None) -> None:
    """Give up waiting out an outage (re-raising its error) once `check()` is true, e.g. on a hard stop."""
    global _stop_check
    _stop_check = check


def through_db_outage(fn: Callable[[], T], what: str, should_stop: Callable[[], bool] | None = None) -> T:
    """`fn()`, retried while the database is unreachable, for at most HPSEARCH_OUTAGE_SECONDS.

    `what` names the database (its URL masked) in the "waiting" lines and in the final error.
    """
    try:
        return _NOTICE.call(
            fn, what=what, transient=is_transient,
            should_stop=lambda: any(check is not None and check() for check in (_stop_check, should_stop)),
        )
    except GaveUp as exc:
        last = exc.__cause__ if exc.__cause__ is not None else exc
        raise DatabaseUnreachable(f"the database ({what}) was unreachable for {patience():.0f}s "
                                  f"(HPSEARCH_OUTAGE_SECONDS): {cause_line(last)}") from last
    except Exception as exc:
        if not refusal(exc):
            raise
        # Waiting would not help (a dropped role or database, a changed password): say so at once.
        raise DatabaseRefused(f"the database ({what}) refuses the connection: {driver_reason(exc)}") from exc


class OutageProofStorage(BaseStorage):
    """An Optuna storage whose every call rides out an outage of its database (see the module's doc).

    It wraps the storage Optuna itself would use for an RDBStorage (its trial cache in front), so
    reads cost what they cost before. Not a BaseHeartbeat: hpsearch keeps its own heartbeat in user
    attributes, and Optuna's (off for this storage, as before) stays off.
    """

    def __init__(self, rdb: optuna.storages.RDBStorage, url: str):
        # get_storage puts Optuna's trial cache in front of an RDBStorage, as Study would on its own;
        # given this wrapper instead, Study uses it as it is.
        self._inner = optuna.storages.get_storage(rdb)
        self.shown = f"study storage {mask_url(url)}"

    def _call(self, fn: Callable[[], T]) -> T:
        return through_db_outage(fn, self.shown)

    # ---- the two writes that are not idempotent

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        # A create whose reply was lost would, retried blindly, leave a second RUNNING trial that no
        # process owns: the budget would wait on it until a reaper failed it. The token lets a retry
        # find the trial the first attempt made.
        token = uuid.uuid4().hex
        if template_trial is None:  # what Study.ask passes; the same trial as Optuna would create
            template = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={CREATE_TOKEN_ATTR: token})
        else:
            template = copy.deepcopy(template_trial)
            template.system_attrs = {**template.system_attrs, CREATE_TOKEN_ATTR: token}
        attempts = [0]

        def create() -> int:
            attempts[0] += 1
            if attempts[0] > 1:
                for trial in self._inner.get_all_trials(study_id, deepcopy=False):
                    if trial.system_attrs.get(CREATE_TOKEN_ATTR) == token:
                        return trial_access.trial_id(trial)
            return self._inner.create_new_trial(study_id, template_trial=template)

        return self._call(create)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
                               ) -> bool:
        attempts = [0]

        def update() -> bool:
            attempts[0] += 1
            try:
                return self._inner.set_trial_state_values(trial_id, state=state, values=values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a commit whose reply was lost finds the trial already finished:
                # told already, if it is in the state (and values) this call was to set.
                if attempts[0] > 1 and state.is_finished():
                    trial = self._inner.get_trial(trial_id)
                    if trial.state == state and (values is None or trial.values == [float(v) for v in values]):
                        return True
                raise

        # Popping a WAITING trial (state RUNNING) is not covered: a retry after a lost reply returns
        # False, Study.ask moves on and the popped trial stays RUNNING without an owner. hpsearch's
        # reaper fails it once its owner-less grace period is over, and retries it.
        return self._call(update)

    # ---- everything else: idempotent (upserts, reads), retried as is

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        # A retry after a lost reply raises DuplicatedStudyError: create_or_resume then loads the study.
        return self._call(lambda: self._inner.create_new_study(directions, study_name))

    def delete_study(self, study_id: int) -> None:
        self._call(lambda: self._inner.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call(lambda: self._inner.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call(lambda: self._inner.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call(lambda: self._inner.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call(lambda: self._inner.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call(lambda: self._inner.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(lambda: self._inner.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(lambda: self._inner.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call(self._inner.get_all_studies)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        # A repeated insert of the same param is an integrity error Optuna ignores.
        self._call(lambda: self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call(lambda: self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number))

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._call(lambda: self._inner.get_trial_number_from_id(trial_id))

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._call(lambda: self._inner.get_trial_param(trial_id, param_name))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._call(lambda: self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call(lambda: self._inner.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call(lambda: self._inner.set_trial_system_attr(trial_id, key, value))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call(lambda: self._inner.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
                       ) -> list[FrozenTrial]:
        return self._call(lambda: self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states))

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._call(lambda: self._inner.get_n_trials(study_id, state))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call(lambda: self._inner.get_best_trial(study_id))

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._call(lambda: self._inner.get_trial_params(trial_id))

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call(lambda: self._inner.get_trial_user_attrs(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call(lambda: self._inner.get_trial_system_attrs(trial_id))

    def remove_session(self) -> None:
        self._inner.remove_session()

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._inner.check_trial_is_updatable(trial_id, trial_state)
