"""A study's database that goes away for a while: calls wait it out, locks wait interruptibly and with a deadline."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import sqlalchemy.exc
import yaml
from optuna.trial import TrialState

from hpsearch.core import record_keys
from hpsearch.core.db_errors import is_transient
from hpsearch.core.errors import RunFailure
from hpsearch.core.lock_waits import LockTimeout, LockWaitAborted
from hpsearch.search import trial_access
from hpsearch.storage import db_outages, locks, ownership, stores
from hpsearch.storage.db_outages import OutageProofStorage

from .pg_cluster import PrivateCluster, missing_reason
from .support import REPO, TINY_SPACE, merge

PASSWORD = "s3cret-pw"


@pytest.fixture(autouse=True)
def _fresh_notice(monkeypatch):
    """Each test sees its own first "waiting for the database" line (they are shown once per 10 s)."""
    monkeypatch.setattr(db_outages._NOTICE, "_last", float("-inf"))


def _connection_lost() -> Exception:
    return sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


def _storage_internal(cause: Exception) -> Exception:
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


def _pending_rollback(after: Exception) -> Exception:
    """What Optuna's retry of a read on the same session raises after `after` (raised while handling it)."""
    try:
        try:
            raise after
        except Exception:
            raise sqlalchemy.exc.PendingRollbackError("Can't reconnect until rolled back") from None
    except sqlalchemy.exc.PendingRollbackError as pending:
        return pending


# ------------------------------------------------------------------ what is waited out, what is not


def test_only_lost_connections_are_transient():
    assert is_transient(_connection_lost())
    assert is_transient(_storage_internal(_connection_lost()))
    assert is_transient(sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")))
    assert not is_transient(_storage_internal(sqlalchemy.exc.DataError("INSERT", {}, Exception("value too long"))))
    assert is_transient(_storage_internal(_pending_rollback(after=_connection_lost())))
    assert not is_transient(_storage_internal(_pending_rollback(after=sqlalchemy.exc.IntegrityError("", {}, None))))
    for error in (optuna.exceptions.DuplicatedStudyError(), KeyError("no study"), ValueError("bad"),
                  optuna.exceptions.UpdateFinishedTrialError("finished")):
        assert not is_transient(error), error


@pytest.fixture
def flaky_study(workdir, monkeypatch):
    """A study on an outage-proof SQLite storage; `lose_reply(name)` makes the next call of that inner
    storage method commit, then fail as if the server died before answering."""
    monkeypatch.setenv("HPSEARCH_OUTAGE_SECONDS", "30")
    storage = OutageProofStorage(optuna.storages.RDBStorage(f"sqlite:///{workdir / 'study.db'}"), "sqlite:///study.db")
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    inner = storage._inner

    def lose_reply(name: str) -> None:
        method = getattr(inner, name)

        def commit_then_fail(*args, **kwargs):
            monkeypatch.setattr(inner, name, method)  # once
            method(*args, **kwargs)
            raise _storage_internal(_connection_lost())

        monkeypatch.setattr(inner, name, commit_then_fail)

    return study, lose_reply


def test_a_create_whose_reply_was_lost_adds_no_second_trial(flaky_study, capsys):
    study, lose_reply = flaky_study
    lose_reply("create_new_trial")
    trial = study.ask()
    assert [t.number for t in study.trials] == [trial.number] == [0]
    assert study.trials[0].state == TrialState.RUNNING
    err = capsys.readouterr().err
    assert "waiting for the database (study storage sqlite:///study.db)" in err
    assert "server closed the connection unexpectedly" in err  # the driver's reason, not Optuna's wrapper
    assert "the database is back" in err


def test_a_tell_whose_reply_was_lost_is_done_not_an_error(flaky_study):
    study, lose_reply = flaky_study
    trial = study.ask()
    lose_reply("set_trial_state_values")
    study.tell(trial, 0.5)
    assert study.trials[0].state == TrialState.COMPLETE
    assert study.trials[0].value == 0.5


def test_telling_a_finished_trial_still_fails(flaky_study):
    study, _ = flaky_study
    trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # not taken for a lost reply
        study._storage.set_trial_state_values(trial_access.trial_id(trial), TrialState.COMPLETE, [0.5])


def test_a_heartbeat_that_cannot_be_written_does_not_raise(monkeypatch, capsys):
    study = optuna.create_study()

    def unreachable(*args):
        raise RunFailure("the database was unreachable for 900s")

    monkeypatch.setattr(trial_access, "set_trial_attr", unreachable)
    ownership.beat(study, [0, 1])
    assert "could not record the heartbeat" in capsys.readouterr().err


# ------------------------------------------------------------------ the budget lock


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@")  # the local server trusts 127.0.0.1


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_the_budget_lock_wait_ends_on_a_stop_request_and_at_its_deadline(kind, request, workdir):
    url = _with_password(request.getfixturevalue("postgres_url")) if kind == "postgresql" else "studies/journal.log"
    with locks.budget_lock(url, "tiny"):
        started = time.monotonic()
        with pytest.raises(LockWaitAborted):
            with locks.budget_lock(url, "tiny", should_stop=lambda: True):
                pytest.fail("the lock is held")
        with pytest.raises(LockTimeout) as timeout:
            with locks.budget_lock(url, "tiny", timeout=0.5):
                pytest.fail("the lock is held")
        assert time.monotonic() - started < 5
        message = str(timeout.value)
        assert "gave up after 0.5s waiting for" in message
        assert PASSWORD not in message
        if kind == "postgresql":
            assert "the lock 'tiny' on postgresql://postgres:***@127.0.0.1" in message
            assert "held by PostgreSQL backend pid" in message
        else:
            assert "journal.tiny.lock" in message
        with locks.budget_lock(url, "other", timeout=1):  # other studies are not held up
            pass
    with locks.budget_lock(url, "tiny", timeout=1):  # released
        pass


WAIT_FOR_THE_LOCK = """
import sys
from hpsearch.storage.locks import budget_lock

def in_the_wait():
    if not in_the_wait.said:
        in_the_wait.said = True
        print("waiting", flush=True)
    return False

in_the_wait.said = False
with budget_lock(sys.argv[1], "tiny", should_stop=in_the_wait):
    print("acquired", flush=True)
"""


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_ctrl_c_ends_the_wait_for_the_budget_lock(kind, request, workdir):
    url = request.getfixturevalue("postgres_url") if kind == "postgresql" else str(workdir / "studies/journal.log")
    with locks.budget_lock(url, "tiny"):
        proc = subprocess.Popen([sys.executable, "-c", WAIT_FOR_THE_LOCK, url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert proc.stdout.readline().strip() == "waiting"  # polling the lock now
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
    assert proc.returncode != 0
    assert "acquired" not in out
    assert "KeyboardInterrupt" in err


# ------------------------------------------------------------------ a real restart

N_TRIALS = 4
OUTAGE_SECONDS = 4.0


def _state_counts(url: str) -> dict[str, int]:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return dict(conn.execute("SELECT state::text, count(*) FROM trials GROUP BY state").fetchall())
    except psycopg.Error:  # no tables yet, or the server is starting
        return {}


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of the test's own, which it may stop and start; always stopped afterwards."""
    reason = missing_reason()
    if reason:
        pytest.skip(f"no private PostgreSQL cluster: {reason} (.ci/run installs the postgresql package)")
    cluster = PrivateCluster()
    try:
        cluster.init()
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.destroy()


def test_the_postgres_lock_rides_out_a_restart(private_postgres, monkeypatch, capsys):
    cluster = private_postgres
    monkeypatch.setenv("HPSEARCH_OUTAGE_SECONDS", "60")
    with locks.budget_lock(cluster.url, "tiny"):
        cluster.stop("fast")  # the lock ends with its session: the unlock finds nothing, and must not raise
    with pytest.raises(LockWaitAborted):  # a stop request ends the wait for the server too
        with locks.budget_lock(cluster.url, "tiny", should_stop=lambda: True):
            pytest.fail("the server is down")
    restart = threading.Timer(1.5, cluster.start)
    restart.start()
    try:
        with locks.budget_lock(cluster.url, "tiny", timeout=30):  # waits for the server, then takes the lock
            pass
    finally:
        restart.join()
    err = capsys.readouterr().err
    assert f"waiting for the database (lock 'tiny' on {cluster.url}): " in err
    assert re.search(r"Connection refused; giving up in \d+s", err), err


@pytest.mark.slow
def test_a_study_survives_a_database_restart_mid_study(workdir, private_postgres):
    cluster = private_postgres
    space = merge(TINY_SPACE, {"study": {"n_trials": N_TRIALS}, "resources": {"trials_per_device": 2}})
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HPSEARCH_OUTAGE_SECONDS": "120"}
    log_path = workdir / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", "tiny.yaml", "--storage", cluster.url],
                                cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    restarted_at: dict[str, int] | None = None
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if restarted_at is None:
                counts = _state_counts(cluster.url)
                if counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) >= 1 and counts.get("RUNNING", 0) >= 1:
                    cluster.stop("fast")
                    time.sleep(OUTAGE_SECONDS)  # long enough that every process meets the server down
                    cluster.start()
                    restarted_at = counts
            time.sleep(0.2)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    output = log_path.read_text()
    assert restarted_at is not None, f"the study ended before it could be restarted mid-study:\n{output}"
    assert proc.returncode == 0, output
    said = re.findall(r"waiting for the database \((?:study storage|lock 'tiny' on) postgresql://postgres@127\.0\.0\.1",
                      output)
    assert 1 <= len(said) <= 3, output  # said, but once per process (the parent, two workers), not per retry
    assert "the database is back" in output, output

    study = optuna.load_study(study_name="tiny", storage=stores.open_storage(cluster.url))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == N_TRIALS, (states, output)
    assert TrialState.RUNNING not in states, (states, output)
    assert TrialState.WAITING not in states, (states, output)
    outage_words = ("database", "connection", "server", "OperationalError", "StorageInternalError", "unreachable")
    for t in study.trials:
        if t.state == TrialState.FAIL:
            reason = t.user_attrs.get(record_keys.ATTR_FAIL_REASON, "")
            assert not any(word in reason for word in outage_words), (t.number, reason, output)
