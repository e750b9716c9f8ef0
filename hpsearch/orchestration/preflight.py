"""Before a run: both stores contacted once, the storage first.
"""

from __future__ import annotations

from hpsearch.storage.probe import check_storage
from hpsearch.tracking.probe import check_tracking


def check_stores(storage: str | None, tracking_uri: str | None) -> None:
    """check_storage, then check_tracking: what a command that uses both does first."""
    check_storage(storage)
    check_tracking(tracking_uri)
