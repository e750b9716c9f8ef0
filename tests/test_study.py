"""Who owns a RUNNING trial, and when a later run may reap it."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys

from optuna.trial import TrialState, create_trial

from hpsearch.core import record_keys
from hpsearch.storage import ownership


def running(attrs: dict, started_seconds_ago: float = 5.0):
    trial = create_trial(state=TrialState.RUNNING, user_attrs=attrs)
    trial.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=started_seconds_ago)
    return trial


def test_a_live_local_owner_keeps_its_trial():
    assert ownership.owner_is_alive(running(ownership.owner_attrs()))


def test_a_dead_local_owner_loses_it():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    attrs = {record_keys.ATTR_HOST: socket.gethostname(), record_keys.ATTR_OWNER_PID: proc.pid,
             record_keys.ATTR_OWNER_START: 0.0}
    assert not ownership.owner_is_alive(running(attrs))


def test_a_recycled_pid_is_not_the_owner():
    attrs = ownership.owner_attrs() | {record_keys.ATTR_OWNER_START: ownership.process_start_time(os.getpid()) - 100}
    assert not ownership.owner_is_alive(running(attrs))


def test_another_machine_is_alive_while_it_beats():
    now = 1_000_000.0
    attrs = {record_keys.ATTR_HOST: "elsewhere", record_keys.ATTR_OWNER_PID: 1}
    fresh = running(attrs | {record_keys.ATTR_HEARTBEAT: now - 30})
    stale = running(attrs | {record_keys.ATTR_HEARTBEAT: now - ownership.STALE_AFTER_SECONDS - 1})
    assert ownership.owner_is_alive(fresh, now=now)
    assert not ownership.owner_is_alive(stale, now=now)


def test_a_trial_just_asked_has_a_grace_period_before_its_owner_is_recorded():
    assert ownership.owner_is_alive(running({}, started_seconds_ago=2))
    assert not ownership.owner_is_alive(running({}, started_seconds_ago=120))
