"""A trial's checkpoint in MLflow: where it is stored, saving it atomically, and fetching it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow import MlflowClient

if TYPE_CHECKING:
    from mlflow import MlflowClient
from hpsearch.tracking.mlflow_client import resolve_uri

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "model.pt"


def checkpoint_uri(client: MlflowClient, run_id: str) -> str | None:
    """The URI of a run's best-epoch checkpoint, or None when it logged none."""
    try:
        files = client.list_artifacts(run_id, CHECKPOINT_DIR)
    except Exception:
        return None
    if not any(f.path.endswith(CHECKPOINT_FILE) for f in files):
        return None
    return f"{client.get_run(run_id).info.artifact_uri}/{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"


def download_checkpoint(uri: str, run_id: str, dest: str, name: str = CHECKPOINT_FILE) -> str:
    from mlflow.artifacts import download_artifacts

    return download_artifacts(
        run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{name}", dst_path=dest, tracking_uri=resolve_uri(uri)
    )
