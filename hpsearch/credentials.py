"""Credentials: where store URLs come from, and the one way a password is hidden before anything is shown or kept.

A password may sit in `--storage`, `--tracking-uri`, the space file, or the environment
(HPSEARCH_STORAGE, MLFLOW_TRACKING_URI; MLFLOW_TRACKING_USERNAME/PASSWORD and libpq's PGPASSWORD or
~/.pgpass are read by MLflow and psycopg themselves). Everything hpsearch prints, logs, exports or
stores in Optuna and MLflow goes through `mask_url` (one URL) or `redact` (free text).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpsearch.spec import Spec

STORAGE_ENV = "HPSEARCH_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
# Environment variables whose values are secrets themselves: never echoed, even inside an error text.
SECRET_ENV = ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
MASK = "***"
_SECRET_QUERY_KEYS = {"password", "passwd", "pwd", "secret", "token", "api_key", "access_token"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`;,()]+")  # a URL inside prose ends at these
_known: set[str] = set()  # passwords seen in URLs this process masked: redact() hides them anywhere


def _remember(secret: str | None) -> None:
    if secret and secret != MASK and len(secret) >= 3:  # a 1-2 character "secret" would shred every text
        _known.add(secret)


def mask_url(url: str | None) -> str | None:
    """`url` with its password replaced by *** (database URLs, SQLAlchemy's rendering) or its user info
    dropped (http/https: MLflow takes those from MLFLOW_TRACKING_USERNAME/PASSWORD). Paths pass unchanged."""
    if url is None or "://" not in url:
        return url
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        from urllib.parse import urlsplit, urlunsplit

        try:
            parts = urlsplit(url)
            _remember(parts.password)
            netloc = parts.netloc.rsplit("@", 1)[-1]
            return urlunsplit(parts._replace(netloc=netloc, query=_mask_query(parts.query)))
        except ValueError:
            return _strip_userinfo(url)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return _strip_userinfo(url)
    _remember(parsed.password if isinstance(parsed.password, str) else None)
    query = {k: (MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parsed.query.items()}
    for k, v in parsed.query.items():
        if k.lower() in _SECRET_QUERY_KEYS:
            for item in (v,) if isinstance(v, str) else v:
                _remember(item)
    # SQLAlchemy percent-encodes the *** it is given in the query; show it the way it shows the password.
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def _mask_query(query: str) -> str:
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
        return query  # untouched, byte for byte
    for k, v in pairs:
        if k.lower() in _SECRET_QUERY_KEYS:
            _remember(v)
    return urlencode([(k, MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")


def _strip_userinfo(url: str) -> str:
    """The fallback for URLs no parser accepts: drop everything between :// and the last @ of the authority."""
    scheme, rest = url.split("://", 1)
    authority, sep, tail = rest.partition("/")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        _remember(userinfo.partition(":")[2])
        authority = host
    return f"{scheme}://{authority}{sep}{tail}"


def redact(text: str) -> str:
    """`text` (an error message, a fail reason) with every URL masked and every known password hidden."""
    if not text:
        return text
    text = _URL.sub(lambda m: mask_url(m.group(0)) or "", text)
    for name in SECRET_ENV:
        _remember(os.environ.get(name))
    for name in (STORAGE_ENV, TRACKING_ENV):
        mask_url(os.environ.get(name))  # learns their passwords
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def usable_url(url: str | None, env: str, *candidates: str | None) -> str | None:
    """A URL read back from something hpsearch wrote (a masked `:***@` password) made usable again:
    the environment's URL (or one of `candidates`, e.g. the space file's) when it masks to the same one,
    else the URL without a password, for the driver to complete from PGPASSWORD / ~/.pgpass."""
    if url is None or f":{MASK}@" not in url:
        return url
    for real in (os.environ.get(env), *candidates):
        if real and mask_url(real) == url:
            return real
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):  # not a database URL: drop the placeholder
        return url.replace(f":{MASK}@", "@", 1)
    # URL.set() ignores None, so the password is dropped by building the URL again without it.
    return URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query).render_as_string(
        hide_password=False
    )


def masked_spec(spec: Spec) -> Spec:
    """The spec as it may be stored or exported: store URLs masked."""
    return dataclasses.replace(
        spec,
        study=dataclasses.replace(spec.study, storage=mask_url(spec.study.storage)),
        tracking=dataclasses.replace(spec.tracking, uri=mask_url(spec.tracking.uri) or spec.tracking.uri),
    )
