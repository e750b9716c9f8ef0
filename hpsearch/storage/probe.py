"""The study storage's start-up check (see core.store_contact): a journal file, an Optuna RDB URL or a redis:// journal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.core.store_contact import STORAGE_OPTION, Refused, StoreUnusable, check_database, contact


def check_storage(url: str | None) -> None:
    """Contact the study storage once (None: the default journal file); StoreUnusable if it cannot be used."""
    url = url or DEFAULT_STORAGE
    if url.startswith(("redis://", "rediss://")):
        contact(STORAGE_OPTION, url, _redis_attempt(url), _redis_transient)
    elif "://" in url:
        check_database(STORAGE_OPTION, url, "an Optuna storage URL such as postgresql://USER@HOST/DB, "
                                             "sqlite:///FILE, redis://HOST, or a journal file path")
    else:
        _check_journal(url)


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


def _redis_attempt(url: str) -> Callable[[float], object]:
    def attempt(seconds: float) -> None:
        try:
            import redis
        except ImportError as exc:
            raise Refused("a redis:// storage needs the redis package (pip install redis)") from exc
        redis.Redis.from_url(url, socket_connect_timeout=seconds, socket_timeout=seconds).ping()

    return attempt


def _redis_transient(exc: BaseException) -> bool:
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and not isinstance(
        exc, redis.AuthenticationError)
