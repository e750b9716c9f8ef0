"""The start-up probe's common part: each command contacts the study storage and the MLflow tracking store it uses
once, before any work, and a store that cannot be used is one line naming its option (exit 2).

A store that refuses for good (a wrong password, a role or database that does not exist, an unknown
host, an unsupported scheme, a file that cannot be opened, a server that is not MLflow) fails at
once. One that does not answer (connection refused, timed out, HTTP 503) is tried again until
HPSEARCH_CONNECT_TIMEOUT seconds (default 5) have passed, then fails with the same one line. The long
outage patience (HPSEARCH_OUTAGE_SECONDS, core.outages) is for a store that answered here first
and then went away: a restart mid-study. The stores' own checks: storage.probe, tracking.probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hpsearch.core.credentials import mask_url
from hpsearch.core.errors import UsageError
from hpsearch.core.outages import CONNECT_ENV, GaveUp, call_through_outage, connect_deadline, first_line

STORAGE_OPTION = "--storage"
TRACKING_OPTION = "--tracking-uri"

# A name that does not resolve (EAI_NONAME, as glibc, musl and macOS word it) is a typo at start-up;
# "Temporary failure in name resolution" (EAI_AGAIN) is not in the list and is tried again.
_UNKNOWN_HOST = ("Name or service not known", "nodename nor servname provided", "No address associated with hostname")


class StoreUnusable(UsageError):
    """A store named by --storage or --tracking-uri cannot be used: a usage error, exit 2."""

    def __init__(self, option: str, url: str, reason: str, verb: str = "cannot be used"):
        # A space, never a colon, after the URL: the CLI redacts every URL in an error again, and a
        # database URL parsed with a ":" glued on renders it as "%3A".
        super().__init__(f"{option} {mask_url(url)} {verb}: {reason}")


class StoreNotAnswering(StoreUnusable):
    """The store did not answer within the connect deadline (refused, timed out, HTTP 503): maybe not for good."""

    def __init__(self, option: str, url: str, reason: str, seconds: float):
        super().__init__(option, url, reason, verb=f"did not answer within {seconds:g}s ({CONNECT_ENV})")


class Refused(Exception):
    """A store answered with something no retry changes; the message says what."""


# ---------------------------------------------------------------- one contact, within the deadline


def contact(option: str, url: str, attempt: Callable[[float], object],
             transient: Callable[[BaseException], bool]) -> None:
    """`attempt(seconds left)` until it succeeds, is refused, or HPSEARCH_CONNECT_TIMEOUT seconds have passed."""
    deadline = connect_deadline()
    ends = time.monotonic() + deadline
    try:
        call_through_outage(lambda: attempt(max(0.5, ends - time.monotonic())), what=option, wait_for=deadline,
                            transient=lambda exc: transient(exc) and not _unknown_host(exc))
    except GaveUp as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise StoreNotAnswering(option, url, _reason(cause), deadline) from cause
    except Exception as exc:
        raise StoreUnusable(option, url, _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    """A few words for why: the driver's own line for a database, short_reason for HTTP."""
    import sqlalchemy.exc

    from hpsearch.core.db_errors import driver_reason
    from hpsearch.core.outages import short_reason

    if isinstance(exc, Refused):
        return str(exc)
    if _unknown_host(exc):
        return "unknown host (the name does not resolve)"
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return driver_reason(exc)
    return short_reason(exc)


def _unknown_host(exc: BaseException) -> bool:
    text = str(exc)
    return any(words in text for words in _UNKNOWN_HOST)


# ---------------------------------------------------------------- the kinds of store


def check_database(option: str, url: str, expected: str) -> None:
    """A SQLAlchemy URL: parsed, its driver loaded, then one connection opened and closed (SQLite: the file opened)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    from hpsearch.core.db_errors import connect_args, is_transient

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise StoreUnusable(option, url, f"unsupported scheme {url.split('://', 1)[0]!r}; expected {expected}") from exc
    except (ArgumentError, ValueError) as exc:  # "host:notaport" is a ValueError from int()
        raise StoreUnusable(option, url, f"not a valid URL ({first_line(exc)}); expected {expected}") from exc
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(option, url, parsed.database)
        return

    def attempt(seconds: float) -> None:
        try:
            engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args(url, seconds))
        except Exception as exc:  # a driver that is not installed, an option it does not take
            raise Refused(first_line(exc)) from exc
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()

    contact(option, url, attempt, is_transient)


def _check_sqlite(option: str, url: str, database: str | None) -> None:
    """An SQLite file: opened (created if missing), nothing more. No statement, so no lock: processes
    started together may be creating MLflow's or Optuna's tables in it right now."""
    import sqlite3
    from urllib.parse import quote

    if not database or database == ":memory:":
        return
    try:
        sqlite3.connect(f"file:{quote(database)}?mode=rwc", uri=True).close()
    except sqlite3.Error as exc:
        raise StoreUnusable(option, url, first_line(exc)) from exc
