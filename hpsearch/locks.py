"""Inter-process locks: a lock file beside a local store, an advisory lock on PostgreSQL."""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from pathlib import Path

_ENGINES: dict = {}


@contextmanager
def file_lock(path: str | Path):
    """An exclusive flock on `path` (created if missing); released when the block ends or the process dies."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def postgres_lock(url: str, name: str):
    """A session-level advisory lock named `name` on the PostgreSQL server behind `url`."""
    import sqlalchemy

    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = sqlalchemy.create_engine(url, pool_pre_ping=True)
    key = zlib.crc32(f"hpsearch:{name}".encode())
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
