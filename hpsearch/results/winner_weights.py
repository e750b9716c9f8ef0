"""A finished trial's best checkpoint on this disk, and the trial's network rebuilt around it.

One home for what `best --export/--evaluate/--register` and `compress` all need: the checkpoint comes from
MLflow, or from the local file kept when MLflow never took it (`checkpoint_local` of the trial's record).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.core.errors import UsageError
from hpsearch.tracking import checkpoints

if TYPE_CHECKING:
    from torch import nn

    from hpsearch.spec.spec_types import Spec


def has_checkpoint(record: dict[str, Any]) -> bool:
    """Whether the trial's record (results.tables.trial_record) points at a checkpoint anywhere."""
    return bool(record.get("checkpoint") and record.get("mlflow_run_id")) or bool(record.get("checkpoint_local"))


@contextmanager
def checkpoint_file(record: dict[str, Any], tracking_uri: str, what: str) -> Iterator[Path]:
    """The trial's checkpoint as a file, for the length of the block (a download is removed after it).
    Without one: UsageError("`what`: why the trial has none")."""
    if not has_checkpoint(record):
        raise UsageError(f"{what}: {record['checkpoint_note']}")
    if record.get("checkpoint_local"):
        yield Path(record["checkpoint_local"])
        return
    with tempfile.TemporaryDirectory(prefix="hpsearch-checkpoint-") as tmp:
        yield Path(checkpoints.download_checkpoint(tracking_uri, record["mlflow_run_id"], tmp))


def load_weights(path: Path) -> dict[str, Any]:
    """A checkpoint's state_dict, on the CPU (tensors only: weights_only refuses pickled code)."""
    import torch

    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def trial_model(spec: Spec, params: dict[str, Any], state: dict[str, Any]) -> nn.Module:
    """The network the trial with these params trained, holding `state`: the spec's model with the trial's
    choices, its head as wide as the checkpoint's (no dataset needed), no pretrained weights loaded first."""
    from hpsearch.orchestration.builders import hparams_for, rebuilt_model
    from hpsearch.spec.study_spec import with_task_choices

    spec = with_task_choices(spec, params)  # a searched backbone or input size
    return rebuilt_model(spec, hparams_for(spec, params), state)
