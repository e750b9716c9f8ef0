"""Telling a database that is away (worth waiting for) from one that refuses for good (a wrong password, a role or
database that does not exist): shared by the study storage and MLflow's SQL stores.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hpsearch.core.outages import connect_deadline, first_line

# How libpq and SQLite word a refusal that no wait changes (SQLSTATE classes 28 and 3D, 42501, and
# options the client itself rejects). libpq gives no SQLSTATE for a failed connection, so the text is
# all there is; a server set to another language words them otherwise, and those are waited out.
_REFUSALS = re.compile(
    r"password authentication failed|authentication failed for user|no password supplied"
    r"|no pg_hba\.conf entry|pg_hba\.conf rejects|is not permitted to log in"
    r"|(role|database|user) \"[^\"]*\" does not exist|permission denied for database"
    r"|invalid sslmode value|invalid connection option|invalid integer value|invalid port number"
    r"|server does not support SSL|certificate verify failed"
    r"|unable to open database file|attempt to write a readonly database"
)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors behind the wrappers that say nothing of their own (see _wrapped)."""
    chain: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = _wrapped(error)
    return chain


def refusal(exc: BaseException) -> bool:
    """Whether the database answered `exc` with a refusal that waiting cannot change (see _REFUSALS)."""
    import sqlalchemy.exc as sa_exc

    return any(isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)) and _REFUSALS.search(str(error))
               for error in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is the database being unreachable (worth waiting out), not a real error."""
    import sqlalchemy.exc as sa_exc

    if refusal(exc):
        return False
    for error in _chain(exc):
        if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
    return False


def _wrapped(error: BaseException) -> BaseException | None:
    """The error behind a wrapper that says nothing of its own, or None when `error` is no such wrapper."""
    import sqlalchemy.exc as sa_exc

    if any(c.__name__ == "StorageInternalError" and c.__module__.startswith("optuna") for c in type(error).__mro__):
        # Optuna's RDB storage wraps every SQLAlchemy error of a session in StorageInternalError (named, not
        # imported: this module serves MLflow's stores too, where Optuna need not be loaded).
        return error.__cause__
    if isinstance(error, sa_exc.PendingRollbackError):
        # Optuna retries some reads on the same session after an error; when that error was the
        # connection dying, the retry meets this, raised while handling it.
        return error.__context__
    return None


def connect_args(url: str, seconds: float | None = None) -> dict[str, Any]:
    """The driver's arguments for an engine on `url`: a PostgreSQL connection attempt ends after `seconds`
    (default connect_deadline()), so that a host that drops packets fails an attempt instead of hanging it.

    A connect_timeout in the URL itself is the user's and stays. libpq counts whole seconds, at least 2.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return {}
    return {"connect_timeout": max(2, math.ceil(connect_deadline() if seconds is None else seconds))}


def cause_line(exc: BaseException) -> str:
    """The first line of the driver's error behind `exc` (Optuna's wrapper says only "during the commit")."""
    return first_line(_chain(exc)[-1])


def driver_reason(exc: BaseException) -> str:
    """cause_line without what the one-line error names already: 'role "x" does not exist', not
    '(psycopg.OperationalError) connection failed: connection to server at "h", port 5432 failed: FATAL: …'."""
    line = re.sub(r"^\([\w.]+\) ", "", cause_line(exc))  # SQLAlchemy's "(psycopg.OperationalError) "
    return re.split(r"failed: (?:FATAL:\s+)?", line)[-1]
