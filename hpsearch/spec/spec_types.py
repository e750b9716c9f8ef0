"""The typed spec a space file becomes: frozen dataclasses, one per section, and Spec.to_dict() (what a study
keeps and an export writes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from hpsearch.core.data_config import DataConfig
from hpsearch.core.hparams import (
    COST_METRICS,
)
from hpsearch.core.locations import DEFAULT_TRACKING_URI
from hpsearch.search.components import PrunerSpec, SamplerSpec
from hpsearch.search.space import ParamSpec
from hpsearch.spec.pbt_spec import PbtSpec
from hpsearch.spec.teacher_spec import TeacherSpec

# ---------------------------------------------------------------------------- the typed spec


@dataclass(frozen=True)
class Objective:
    metric: str  # params.OBJECTIVE_METRICS
    direction: Literal["maximize", "minimize"]  # its natural direction (params.natural_direction)


@dataclass(frozen=True)
class ConfirmSpec:
    """`study.confirm`: retrain the `top` best configurations `seeds` times each once the search is done."""

    top: int = 3
    seeds: int = 3


@dataclass(frozen=True)
class StudySpec:
    """`metric`/`direction` is what training selects its best epoch (and checkpoint) by: the study's one
    objective, or the first epoch metric among `objectives` in a multi-objective study."""

    name: str
    metric: str
    direction: Literal["maximize", "minimize"]
    n_trials: int
    timeout: float | None  # seconds
    sampler: SamplerSpec
    pruner: PrunerSpec
    storage: str | None
    objectives: tuple[Objective, ...] = ()  # two or three in a multi-objective study; () for one
    scheduler: PbtSpec | None = None  # population-based training (spec/pbt_spec.py); None: trials train alone
    confirm: ConfirmSpec | None = None  # `hpsearch confirm` after the search (results/confirmation.py)

    @property
    def seed(self) -> int:
        return self.sampler.kwargs.get("seed", 0)

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def targets(self) -> tuple[Objective, ...]:
        """Every objective, in the order of a trial's values (one for a single-objective study)."""
        return self.objectives or (Objective(self.metric, self.direction),)

    @property
    def cost_metrics(self) -> tuple[str, ...]:
        """The deployment costs a trial must measure at its end (none unless an objective asks)."""
        return tuple(o.metric for o in self.targets if o.metric in COST_METRICS)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: str  # "none" | "DEFAULT" | a weights enum member name | a file path (config.is_weights_path)


@dataclass(frozen=True)
class TaskSpec:
    model: ModelSpec
    data: DataConfig
    teacher: TeacherSpec | None = None  # knowledge distillation: the network the student learns from


@dataclass(frozen=True)
class ResourcesSpec:
    devices: str | tuple[int, ...] = "auto"  # "auto" | "cpu" | GPU indices
    trials_per_device: int | str = "auto"  # "auto": 1 per GPU; on CPUs the measured faster split of the cores


@dataclass(frozen=True)
class TrackingSpec:
    uri: str = DEFAULT_TRACKING_URI
    experiment: str = ""  # parse_spec fills in the study name
    checkpoints: str = "complete"


@dataclass(frozen=True)
class Spec:
    study: StudySpec
    task: TaskSpec
    train: dict  # fixed hyperparameters, only the ones the file sets
    settings: dict  # the train block's non-hyperparameter settings, defaults filled
    search_space: dict[str, ParamSpec]  # in file order
    resources: ResourcesSpec
    tracking: TrackingSpec
    source: str | None = field(default=None, compare=False)  # the file it came from

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain YAML/JSON types, every default filled; parse_spec() reads it back."""
        s = self.study
        return {
            "study": {
                "name": s.name,
                **({"objectives": [dataclasses.asdict(o) for o in s.objectives]} if s.multi
                   else {"metric": s.metric, "direction": s.direction}),
                "n_trials": s.n_trials,
                "timeout": s.timeout,
                "sampler": {"name": s.sampler.name, **s.sampler.kwargs},
                "pruner": _pruner_to_dict(s.pruner),
                "storage": s.storage,
                **({"scheduler": s.scheduler.to_dict()} if s.scheduler else {}),
                **({"confirm": dataclasses.asdict(s.confirm)} if s.confirm else {}),
            },
            "task": {
                "model": dataclasses.asdict(self.task.model),
                "data": dataclasses.asdict(self.task.data),
                **({"teacher": self.task.teacher.to_dict()} if self.task.teacher else {}),
            },
            "train": {**self.train, **self.settings},
            "search_space": {name: p.to_dict() for name, p in self.search_space.items()},
            "resources": {
                "devices": self.resources.devices if isinstance(self.resources.devices, str)
                else list(self.resources.devices),
                "trials_per_device": self.resources.trials_per_device,
            },
            "tracking": dataclasses.asdict(self.tracking),
        }


def _pruner_to_dict(pruner: PrunerSpec) -> dict[str, Any]:
    kwargs = {k: _pruner_to_dict(v) if isinstance(v, PrunerSpec) else v for k, v in pruner.kwargs.items()}
    return {"name": pruner.name, **kwargs}
