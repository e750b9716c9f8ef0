"""The MLflow client: which tracking URI, a client for it (a local SQLite store tuned and created on first use),
and riding out an outage of the tracking server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from hpsearch.core.outages import OutageNotice, short_reason

# MLflow reads these when it calls, not when it is imported: set (unless the user did) before the first call.
_MLFLOW_DEFAULTS = {
    # No progress bars from artifact downloads: `best --format json` output must stay parseable.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Outages are ridden out by our own retries, which say that they wait; MLflow's defaults (7 silent
    # retries, ~4 minutes per call) would hide them and stall a stop request.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # No "🏃 View run … at: URL" lines per closed run over http (and no extra get_run each time).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def apply_mlflow_defaults() -> None:
    """hpsearch's MLflow settings, in this process's environment; a value the user set is kept."""
    for name, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)


T = TypeVar("T")


# HTTP answers that mean "not now" rather than "never": MLflow's own list of retried codes.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def unreachable(exc: BaseException) -> bool:
    """Whether an MLflow call failed because the server or its database is away (worth retrying)."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import RestException

    if isinstance(exc, sqlalchemy.exc.OperationalError):  # a database-backed store (no server between)
        from hpsearch.core.db_errors import refusal

        return not refusal(exc)  # a dropped database or a changed password is not waited out
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError)):
        return True
    if isinstance(exc, requests.HTTPError):
        return exc.response is not None and exc.response.status_code in _TRANSIENT_HTTP
    if isinstance(exc, MlflowException):
        if exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        if isinstance(exc, RestException):  # the server answered: an error of its own, such as its database gone
            return exc.get_http_status_code() in _TRANSIENT_HTTP
        text = str(exc)  # how MLflow's REST client words a request that got no answer
        return text.startswith("API request to") and (
            "failed with exception" in text or "failed with timeout" in text
            or any(f"error code {code}" in text for code in _TRANSIENT_HTTP)
        )
    return False


OUTAGE_NOTICE = OutageNotice(
    lambda what, exc, seconds_left: (
        f"MLflow tracking unreachable ({short_reason(exc)}): waiting to deliver {what}; "
        f"giving up in {seconds_left:.0f}s"),
    lambda what, seconds: f"MLflow tracking is back after {seconds:.0f}s ({what} delivered)",
)


def report_outages_to(sink: Callable[[str], None]) -> None:
    """Where this process's "waiting for the tracking store" lines go (a worker sends them to the parent)."""
    OUTAGE_NOTICE.sink = sink


def through_outage(fn: Callable[[], T], what: str, wait_for: float | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> T:
    """`fn()`, retried while the tracking store is unreachable (see hpsearch.core.outages)."""
    return OUTAGE_NOTICE.call(fn, what=what, transient=unreachable, wait_for=wait_for, should_stop=should_stop)

_SQLITE_TUNED = False


def _tune_sqlite() -> None:
    """WAL journal + synchronous=NORMAL on every SQLite connection this process opens.

    WAL lets the workers' writers and the UI's readers proceed without blocking one another, and
    NORMAL skips the fsync per transaction (a power cut may lose the last commits, never corrupt the
    file). Together they cut an MLflow write from ~7 ms to ~1 ms on this class of disk.
    """
    global _SQLITE_TUNED
    if _SQLITE_TUNED:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    _SQLITE_TUNED = True


def prepare_local_store(uri: str) -> None:
    """The SQLite file's folder must exist before MLflow opens it."""
    if uri.startswith("sqlite:///"):
        _tune_sqlite()
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def resolve_uri(uri: str) -> str:
    """A relative SQLite URI made absolute against the current folder.

    MLflow caches one store per URI string for the life of the process: a relative path would keep
    pointing at the folder where it was first opened.
    """
    apply_mlflow_defaults()  # every way to MLflow passes here first
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def client_for(uri: str) -> MlflowClient:
    uri = resolve_uri(uri)
    prepare_local_store(uri)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    from hpsearch.core.lock_waits import file_lock

    # Opening the store creates or migrates its tables: processes started together must take turns.
    with file_lock(uri[len("sqlite:///"):] + ".init.lock"):
        return MlflowClient(tracking_uri=uri)
