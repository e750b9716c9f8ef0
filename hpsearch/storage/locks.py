"""The study's locks: PostgreSQL's advisory lock for a shared database, a lock file beside a local store, and
the budget lock (one process at a time counts the finished trials and asks for the next).

Both kinds wait by polling (core.lock_waits): interruptible, and a timeout names the lock.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hpsearch.core.credentials import mask_url
from hpsearch.core.db_errors import connect_args
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.core.lock_waits import LOCK_TIMEOUT_SECONDS, LockWaitAborted, file_lock, wait_for_lock
from hpsearch.storage.db_outages import through_db_outage

_ENGINES: dict[str, Any] = {}


def _engine(url: str) -> Any:
    import sqlalchemy


    engine = _ENGINES.get(url)
    if engine is None:
        # Pre-ping: a pooled connection that died with a restarted server is replaced, not used;
        # connect_args: an attempt on a host that drops packets ends instead of hanging the wait.
        engine = _ENGINES[url] = sqlalchemy.create_engine(url, pool_pre_ping=True, isolation_level="AUTOCOMMIT",
                                                          connect_args=connect_args(url))
    return engine


def advisory_key(name: str) -> int:
    return zlib.crc32(f"hpsearch:{name}".encode())


@contextmanager
def postgres_lock(url: str, name: str, timeout: float = LOCK_TIMEOUT_SECONDS,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
    """A session-level advisory lock named `name` on the PostgreSQL server behind `url`.

    Waiting rides out an outage of the server. If the server restarts while the lock is held, the
    lock ends with its session (the next holder may start at once): the unlock then has nothing to
    release and its failure is ignored.
    """
    import sqlalchemy

    from hpsearch.core.db_errors import is_transient

    engine = _engine(url)
    key = advisory_key(name)
    shown = mask_url(url)
    conn: Any = None

    def attempt() -> bool:
        nonlocal conn
        try:
            if conn is None:
                conn = engine.connect()
            return bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        except Exception:
            _discard(conn)
            conn = None
            raise

    def try_once() -> bool:
        try:
            return through_db_outage(attempt, f"lock {name!r} on {shown}", should_stop)
        except Exception as exc:
            if should_stop is not None and is_transient(exc) and should_stop():  # stopped while the server was away
                raise LockWaitAborted(f"stopped while waiting for the lock {name!r} on {shown}") from exc
            raise

    def describe() -> str:
        return f"the lock {name!r} on {shown}{_holder(engine, key)}"

    try:
        wait_for_lock(try_once, describe, timeout, should_stop)
    except BaseException:
        _discard(conn)
        raise
    try:
        yield
    finally:
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.close()
        except Exception:
            # The session died (and its lock with it), or the unlock failed: the connection must not
            # go back to the pool, where it could still hold the lock; closing it releases the lock.
            _discard(conn)


def _discard(conn: Any) -> None:
    """Close `conn` for good (not back into the pool); it may be dead already."""
    if conn is None:
        return
    with suppress(Exception):
        conn.invalidate()
    with suppress(Exception):
        conn.close()


def _holder(engine: Any, key: int) -> str:
    """", held by PostgreSQL backend pid N (client ADDR)", or "" when that cannot be found out."""
    import sqlalchemy

    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text(
                "SELECT l.pid, a.client_addr FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid::bigint = :k"
            ), {"k": key}).first()
    except Exception:
        return ""
    if row is None:
        return ""
    return f", held by PostgreSQL backend pid {row[0]}" + (f" (client {row[1]})" if row[1] else "")


@contextmanager
def budget_lock(storage_url: str | None, study_name: str, should_stop: Callable[[], bool] | None = None,
                timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Make "count the finished and running trials, then ask one more" atomic across processes.

    Several `hpsearch run` processes (on one machine, or on several sharing PostgreSQL) may work on
    one study; without this, two of them can both see one trial left and both start it. Journal
    files use a lock file beside the journal; PostgreSQL an advisory lock keyed by the study name.
    Other storages (SQLite, MySQL, Redis) run unlocked: at worst one trial over the budget per
    extra process.

    The wait is interruptible: Ctrl-C, or `should_stop()` turning true (LockWaitAborted), ends
    it; after `timeout` seconds LockTimeout names the lock. A PostgreSQL outage while waiting
    is waited out; one while holding ends the lock with its session (see locks.postgres_lock).
    """
    url = storage_url or DEFAULT_STORAGE
    if "://" not in url:
        with file_lock(Path(url).resolve().with_suffix(f".{study_name}.lock"), timeout, should_stop):
            yield
    elif url.startswith("postgresql"):
        with postgres_lock(url, study_name, timeout, should_stop):
            yield
    else:
        yield
