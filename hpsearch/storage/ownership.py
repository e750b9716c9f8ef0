"""Who owns a running trial (host, process and its start time), the heartbeat that says it still does, and
reaping the trials whose owner is gone.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core.credentials import redact
from hpsearch.core.db_errors import cause_line
from hpsearch.core.record_keys import (
    ATTR_HEARTBEAT,
    ATTR_HOST,
    ATTR_OWNER_PID,
    ATTR_OWNER_START,
    ATTR_PBT_MEMBER,
    FailureKind,
)
from hpsearch.search import trial_access

# ---- ownership: who is running a trial, so a later run can reap what a dead process left RUNNING ----


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (None if there is no such process): a pid plus this names one process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def owner_attrs() -> dict[str, Any]:
    pid = os.getpid()
    return {ATTR_HOST: socket.gethostname(), ATTR_OWNER_PID: pid, ATTR_OWNER_START: process_start_time(pid)}


HEARTBEAT_SECONDS = 30.0
# A trial owned by another machine is presumed dead when its owner has not beaten for this long.
STALE_AFTER_SECONDS = 600.0


def owner_is_alive(trial: FrozenTrial, now: float | None = None) -> bool:
    """Whether the process that owns a RUNNING trial is still there.

    On this host: the owner's pid exists and started when recorded (a recycled pid does not count).
    On another host we cannot look at processes: the owner beats a heartbeat into the trial every
    HEARTBEAT_SECONDS, and a trial whose heartbeat is older than STALE_AFTER_SECONDS is orphaned.
    """
    attrs = trial.user_attrs
    if ATTR_HOST not in attrs:
        # Owners are recorded right after `ask`; give a trial that young the benefit of the doubt.
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return (now or time.time()) - started < 60.0
    if attrs[ATTR_HOST] != socket.gethostname():
        last = attrs.get(ATTR_HEARTBEAT)
        if last is None and trial.datetime_start is not None:
            last = trial.datetime_start.timestamp()
        return last is not None and (now or time.time()) - last < STALE_AFTER_SECONDS
    pid = attrs.get(ATTR_OWNER_PID)
    if not isinstance(pid, int):
        return False
    owner_started = process_start_time(pid)
    if owner_started is None:
        return False
    recorded = attrs.get(ATTR_OWNER_START)
    return recorded is None or abs(owner_started - recorded) < 1.0


def beat(study: optuna.Study, trial_ids: Iterable[int]) -> None:
    """Record that this process still owns these RUNNING trials (read by other machines).

    Never raises: a database outage is waited out by the storage, and one that outlasts that is
    reported here and tried again at the next beat (the trials stay ours meanwhile).
    """
    now = time.time()
    for trial_id in trial_ids:
        try:
            trial_access.set_trial_attr(study, trial_id, ATTR_HEARTBEAT, now)
        except (RuntimeError, ValueError):
            pass  # finished meanwhile
        except Exception as exc:
            print(redact(f"warning: could not record the heartbeat of our running trials: {type(exc).__name__}: "
                         f"{cause_line(exc)}"), file=sys.stderr)
            return


def reap_orphans(study: optuna.Study) -> list[FrozenTrial]:
    """Mark FAIL every RUNNING trial whose owner is gone (see owner_is_alive); returns them.

    Never a population member: it stays RUNNING between its turns, and one whose owner is gone goes on from its
    checkpoint (orchestration/population.py)."""
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not t.user_attrs.get(ATTR_PBT_MEMBER) and not owner_is_alive(t):
            trial_access.fail_trial(study, t, "its worker process was gone (found by a later run)", FailureKind.REAPED)
            reaped.append(t)
    return reaped
