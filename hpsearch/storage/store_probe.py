"""The start-up probe: each command contacts the study storage and the MLflow tracking store it uses once,
before any work, and a store that cannot be used is one line naming its option (exit 2).

A store that refuses for good (a wrong password, a role or database that does not exist, an unknown
host, an unsupported scheme, a file that cannot be opened, a server that is not MLflow) fails at
once. One that does not answer (connection refused, timed out, HTTP 503) is tried again until
HPSEARCH_CONNECT_TIMEOUT seconds (default 5) have passed, then fails with the same one line. The long
outage patience (HPSEARCH_OUTAGE_SECONDS, hpsearch.core.outages) is for a store that answered here first
and then went away: a restart mid-study.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpsearch.core.credentials import mask_url
from hpsearch.core.errors import UsageError
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.core.outages import CONNECT_ENV, GaveUp, call_through_outage, connect_deadline, first_line

STORAGE_OPTION = "--storage"
TRACKING_OPTION = "--tracking-uri"
# What an MLflow tracking server answers and other HTTP servers do not: its REST API.
MLFLOW_PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"

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


class _Refused(Exception):
    """A store answered with something no retry changes; the message says what."""


def check_storage(url: str | None) -> None:
    """Contact the study storage once (None: the default journal file); StoreUnusable if it cannot be used."""
    url = url or DEFAULT_STORAGE
    if url.startswith(("redis://", "rediss://")):
        _contact(STORAGE_OPTION, url, _redis_attempt(url), _redis_transient)
    elif "://" in url:
        _check_database(STORAGE_OPTION, url, "an Optuna storage URL such as postgresql://USER@HOST/DB, "
                                             "sqlite:///FILE, redis://HOST, or a journal file path")
    else:
        _check_journal(url)


def check_tracking(uri: str | None, needed: bool = True) -> None:
    """Contact the MLflow tracking store once (None: the default SQLite file); StoreUnusable if it cannot be used.

    `needed=False` (a command that can answer without it): a store that only does not answer is a
    warning on stderr, while one that refuses for good still fails.
    """
    from hpsearch.tracking.mlflow_client import DEFAULT_TRACKING_URI, prepare_local_store, resolve_uri, unreachable

    uri = resolve_uri(uri or DEFAULT_TRACKING_URI)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    try:
        if scheme in ("http", "https"):
            _contact(TRACKING_OPTION, uri, _mlflow_attempt(uri), unreachable)
        elif scheme and scheme not in ("file", "databricks", "databricks-uc", "uc"):
            _check_tracking_scheme(uri)
            try:
                prepare_local_store(uri)  # SQLite: its folder, made as MLflow would need it
            except OSError as exc:
                raise StoreUnusable(TRACKING_OPTION, uri, f"cannot create its folder: {exc}") from exc
            _check_database(TRACKING_OPTION, uri, "an MLflow tracking URI such as http://HOST:5000 or sqlite:///FILE")
    except StoreNotAnswering as exc:
        if needed:
            raise
        print(f"warning: {exc}; going on without it", file=sys.stderr)


def check_stores(storage: str | None, tracking_uri: str | None) -> None:
    """check_storage, then check_tracking: what a command that uses both does first."""
    check_storage(storage)
    check_tracking(tracking_uri)


# ---------------------------------------------------------------- one contact, within the deadline


def _contact(option: str, url: str, attempt: Callable[[float], object],
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

    from hpsearch.storage.db_outages import driver_reason
    from hpsearch.tracking.mlflow_client import short_reason

    if isinstance(exc, _Refused):
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


def _check_database(option: str, url: str, expected: str) -> None:
    """A SQLAlchemy URL: parsed, its driver loaded, then one connection opened and closed (SQLite: the file opened)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    from hpsearch.storage.db_outages import connect_args, is_transient

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
            raise _Refused(first_line(exc)) from exc
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()

    _contact(option, url, attempt, is_transient)


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


def _check_journal(path: str) -> None:
    """A journal file: its folder made, the file opened for appending, as Optuna will."""
    resolved = Path(path).resolve()
    if resolved.exists() and not resolved.is_file():  # a folder, a FIFO (opening it would block), a device
        raise StoreUnusable(STORAGE_OPTION, path, "not a regular file, so it cannot be a journal file")
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
        with open(resolved, "ab"):
            pass
    except OSError as exc:
        raise StoreUnusable(STORAGE_OPTION, path, f"cannot be written as a journal file: {exc.strerror or exc}"
                            ) from exc


def _check_tracking_scheme(uri: str) -> None:
    """A scheme MLflow has no tracking store for ("foo://") is refused before anything is opened."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception as exc:
        raise StoreUnusable(TRACKING_OPTION, uri, f"unsupported scheme {uri.split('://', 1)[0]!r}; "
                            "expected an MLflow tracking URI such as http://HOST:5000 or sqlite:///FILE") from exc


def _mlflow_attempt(uri: str) -> Callable[[float], object]:
    """One request to the server's REST API: MLflow answers it with JSON, anything else is not MLflow."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    def attempt(seconds: float) -> None:
        response = http_request(get_default_host_creds(uri), MLFLOW_PROBE_ENDPOINT, "GET", params={"max_results": 1},
                                max_retries=0, timeout=seconds, raise_on_status=False)
        status = response.status_code
        if status in (401, 403):
            raise _Refused(f"the server refuses these credentials (HTTP {status}; see MLFLOW_TRACKING_USERNAME, "
                           "MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN)")
        if status >= 500 or status in (408, 429):
            response.raise_for_status()  # "not now" (its database away, say): tried again until the deadline
        try:
            body = json.loads(response.text)
        except ValueError:
            body = None
        if status != 200 or not isinstance(body, dict) or not set(body) <= {"experiments", "next_page_token"}:
            raise _Refused(f"the server answers, but it is not an MLflow tracking server "
                           f"(HTTP {status} for {MLFLOW_PROBE_ENDPOINT})")

    return attempt


def _redis_attempt(url: str) -> Callable[[float], object]:
    def attempt(seconds: float) -> None:
        try:
            import redis
        except ImportError as exc:
            raise _Refused("a redis:// storage needs the redis package (pip install redis)") from exc
        redis.Redis.from_url(url, socket_connect_timeout=seconds, socket_timeout=seconds).ping()

    return attempt


def _redis_transient(exc: BaseException) -> bool:
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and not isinstance(
        exc, redis.AuthenticationError)
