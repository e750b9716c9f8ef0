"""From a spec to what trains: hyperparameters, seeds, the dataset, the model, the trainer, the run's params.

Shared by a search's trials (objective.py) and single runs (`hpsearch train`, `best --evaluate`: retrain.py).
torch is imported inside the functions: the parent process, which only plans and watches, never loads it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from hpsearch.params import HParams
from hpsearch.spec import Spec

if TYPE_CHECKING:
    from torch import nn

    from hpsearch.data import TaskData
    from hpsearch.train import Trainer


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed and the trial number (stable across machines)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def trial_params(spec: Spec, searched: dict[str, Any]) -> dict[str, Any]:
    """What the trial trains with: fixed values, then searched values (the spec refuses overlaps)."""
    return {**spec.train, **searched}


def hparams_for(spec: Spec, searched: dict[str, Any]) -> HParams:
    return HParams.from_dict(trial_params(spec, searched))


def run_params(spec: Spec, hp: HParams) -> dict[str, Any]:
    """MLflow params of a run: every hyperparameter under its own name, plus model and dataset."""
    return {
        **hp.as_dict(),
        "model": spec.task.model.name,
        "weights": spec.task.model.weights,
        "dataset": spec.task.data.name,
        "image_size": spec.task.data.image_size,
    }


def load_task_data(spec: Spec, device: str) -> TaskData:
    """The task's dataset on `device`, normalised for the model's weights (cached per process)."""
    from hpsearch import data, models

    mean, std = models.normalization(spec.task.model.name, spec.task.model.weights)
    # The validation split follows the study seed: trials of one study share it.
    return data.load_data(spec.task.data, device, mean, std, split_seed=spec.study.seed)


def build_model_for(spec: Spec, hp: HParams, num_classes: int, weights: str | None = None) -> nn.Module:
    from hpsearch import models

    return models.build_model(
        spec.task.model.name,
        num_classes,
        weights=spec.task.model.weights if weights is None else weights,
        dropout=hp.dropout,
        freeze=hp.freeze,
    )


def build_trainer(spec: Spec, hp: HParams, device: str, seed: int) -> tuple[Trainer, TaskData]:
    """Data (cached per process), model and trainer for one set of hyperparameters."""
    from hpsearch import train

    task_data = load_task_data(spec, device)
    train.seed_everything(seed)
    model = build_model_for(spec, hp, task_data.num_classes)
    trainer = train.Trainer(
        model,
        task_data,
        hp,
        device=device,
        settings=train.TrainSettings(**spec.settings),
        metric=spec.study.metric,
        direction=spec.study.direction,
        seed=seed,
    )
    return trainer, task_data
