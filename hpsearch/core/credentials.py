"""Credentials: where store URLs come from, and the one way a password is hidden before anything is shown or kept.

A password may sit in `--storage`, `--tracking-uri`, the space file, or the environment
(HPSEARCH_STORAGE, MLFLOW_TRACKING_URI; MLFLOW_TRACKING_USERNAME/PASSWORD and libpq's PGPASSWORD or
~/.pgpass are read by MLflow and psycopg themselves). Everything hpsearch prints, logs, exports or
stores in Optuna and MLflow goes through `mask_url` (one URL) or `redact` (free text).

A pattern cannot be trusted to find a URL in text (a password may hold `;` or `,`, a YAML string may span
lines or escape a character), so secrets are masked by value: every URL hpsearch parses, and every URL-looking
value of a space file it reads (`learn`), teaches `redact` its secrets, which it then hides wherever they show;
the space file kept with a study is parsed, and its URL values are rewritten masked (`masked_space_file`).
"""

from __future__ import annotations

import os
import re
from typing import Any

STORAGE_ENV = "HPSEARCH_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
# Environment variables whose values are secrets themselves: never echoed, even inside an error text.
SECRET_ENV = ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
MASK = "***"
# A query parameter whose name holds one of these is a secret: password, sslpassword, api_token, client_secret...
_SECRET_KEY_PARTS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "credential")
# A URL inside prose ends at these, or before a final . or : (a sentence's); its user info (up to the last @
# before the path) may hold them.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s/'\"<>`]*@)?[^\s'\"<>`;,()]+(?<![.:])")
_known: set[str] = set()  # secrets seen in URLs this process parsed: redact() hides them anywhere


def _secret_key(name: str) -> bool:
    return any(part in name.lower() for part in _SECRET_KEY_PARTS)


def _remember(secret: str | None) -> None:
    if secret and secret != MASK and len(secret) >= 3:  # a 1-2 character "secret" would shred every text
        _known.add(secret)


def mask_url(url: str | None) -> str | None:
    """`url` with its password replaced by *** (database URLs, SQLAlchemy's rendering) or its user info
    dropped (http/https: MLflow takes those from MLFLOW_TRACKING_USERNAME/PASSWORD). Paths pass unchanged."""
    if url is None or "://" not in url:
        return url
    secrets = sorted((s for s in secrets_of(url) if s != MASK and len(s) >= 3), key=len, reverse=True)
    masked = _masked_url(url)
    # What a parser left in place (a password holding # or @, which it read another way) is hidden by value.
    for secret in secrets:
        _remember(secret)
        masked = masked.replace(secret, MASK)
    return masked


def _masked_url(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        from urllib.parse import urlsplit, urlunsplit

        try:
            parts = urlsplit(url)
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
    query = {k: (MASK if _secret_key(k) else v) for k, v in parsed.query.items()}
    # SQLAlchemy percent-encodes the *** it is given in the query; show it the way it shows the password.
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def _mask_query(query: str) -> str:
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_secret_key(k) for k, _ in pairs):
        return query  # untouched, byte for byte
    return urlencode([(k, MASK if _secret_key(k) else v) for k, v in pairs], safe="*")


def secrets_of(url: str) -> set[str]:
    """Every secret `url` holds (its password, the values of its query parameters named like a password, secret
    or token), as written and percent-decoded, as the authority's own split and SQLAlchemy's parse each read
    them: an unencoded password may hold ; , # / or @, which parsers disagree about."""
    from urllib.parse import unquote, unquote_plus

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in url:
        return set()
    rest = url.split("://", 1)[1]
    authority = rest.partition("/")[0]
    found = {authority.rpartition("@")[0].partition(":")[2]} if "@" in authority else set()
    for pair in re.split("[&;]", rest.partition("?")[2].partition("#")[0]):
        key, _, value = pair.partition("=")
        if _secret_key(unquote_plus(key)):
            found.add(value)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is not None:
        found.add(parsed.password if isinstance(parsed.password, str) else "")
        for key, value in parsed.query.items():
            if _secret_key(key):
                found.update((value,) if isinstance(value, str) else value)
    return {form for secret in found if secret for form in (secret, unquote(secret), unquote_plus(secret))}


def learn(data: Any) -> None:
    """Teach redact() the secrets of every URL-looking string in `data` (a parsed space file: its store URLs,
    and any other value holding ://), so that no later message of this process shows them."""
    stack = [data]
    while stack:  # not recursive: the file's nesting is capped, but a walk need not rely on it
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str):
            learn_text(item)


def learn_text(text: str) -> None:
    # The whole value as one URL (a password may hold a space), and each URL of a value that is prose.
    for candidate in (text, *text.split()):
        if "://" in candidate:
            for secret in secrets_of(candidate):
                _remember(secret)


def _strip_userinfo(url: str) -> str:
    """The fallback for URLs no parser accepts: drop everything between :// and the last @ of the authority."""
    scheme, rest = url.split("://", 1)
    authority, sep, tail = rest.partition("/")
    if "@" in authority:
        authority = authority.rpartition("@")[2]
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
