"""The MLflow tracking store's start-up check (see core.store_contact): a server answers MLflow's REST API, a SQL
store opens.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from hpsearch.core.store_contact import (
    TRACKING_OPTION,
    Refused,
    StoreNotAnswering,
    StoreUnusable,
    check_database,
    contact,
)

# What an MLflow tracking server answers and other HTTP servers do not: its REST API.
MLFLOW_PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"


def check_tracking(uri: str | None, needed: bool = True) -> None:
    """Contact the MLflow tracking store once (None: the default SQLite file); StoreUnusable if it cannot be used.

    `needed=False` (a command that can answer without it): a store that only does not answer is a
    warning on stderr, while one that refuses for good still fails.
    """
    from hpsearch.core.locations import DEFAULT_TRACKING_URI
    from hpsearch.tracking.mlflow_client import prepare_local_store, resolve_uri, unreachable

    uri = resolve_uri(uri or DEFAULT_TRACKING_URI)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    try:
        if scheme in ("http", "https"):
            contact(TRACKING_OPTION, uri, _mlflow_attempt(uri), unreachable)
        elif scheme and scheme not in ("file", "databricks", "databricks-uc", "uc"):
            _check_tracking_scheme(uri)
            try:
                prepare_local_store(uri)  # SQLite: its folder, made as MLflow would need it
            except OSError as exc:
                raise StoreUnusable(TRACKING_OPTION, uri, f"cannot create its folder: {exc}") from exc
            check_database(TRACKING_OPTION, uri, "an MLflow tracking URI such as http://HOST:5000 or sqlite:///FILE")
    except StoreNotAnswering as exc:
        if needed:
            raise
        print(f"warning: {exc}; going on without it", file=sys.stderr)


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
            raise Refused(f"the server refuses these credentials (HTTP {status}; see MLFLOW_TRACKING_USERNAME, "
                           "MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN)")
        if status >= 500 or status in (408, 429):
            response.raise_for_status()  # "not now" (its database away, say): tried again until the deadline
        try:
            body = json.loads(response.text)
        except ValueError:
            body = None
        if status != 200 or not isinstance(body, dict) or not set(body) <= {"experiments", "next_page_token"}:
            raise Refused(f"the server answers, but it is not an MLflow tracking server "
                           f"(HTTP {status} for {MLFLOW_PROBE_ENDPOINT})")

    return attempt
