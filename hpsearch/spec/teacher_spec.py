"""`task.teacher`: which trained network teaches the student (knowledge distillation), resolved and checked.

A teacher is an hpsearch export, `{export: studies/<study>/best}` (its best.yaml names the architecture and the
weights it started from, hence the normalisation it was trained with; model.pt holds its weights; trial.json
its validation accuracy), or a torchvision model with trained weights, `{model: resnet50, weights: DEFAULT}`
(or a weights name, or a state_dict file).

Checked when the spec is read, so `hpsearch validate` refuses with the field: the export folder holds best.yaml
and model.pt, the teacher predicts as many classes as the task has and can take the task's images, and
distill_alpha / distill_temperature are set only with a teacher. One check waits for `hpsearch run`: an export
folder that does not exist yet. A space may name the export its teacher's search will write (the shipped
spaces/distill_cifar.yaml does), so it validates before that search has run; `run` refuses it (exit 2, before
any trial) when it makes the parent run's params, which name the teacher.

Torch-free at import (the spec validates without torch); the class and input-size checks load it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.core import checks
from hpsearch.core.checks import SpecError
from hpsearch.core.data_config import DataConfig
from hpsearch.core.hparams import DISTILL_HPARAMS
from hpsearch.spec import strict_yaml

EXPORT_AT = "task.teacher.export"


@dataclass(frozen=True)
class TeacherSpec:
    """`task.teacher`: an export folder, or a torchvision model and its weights (one or the other)."""

    export: str | None = None
    model: str | None = None
    weights: str | None = None  # DEFAULT | a weights name | a state_dict file

    def to_dict(self) -> dict[str, str]:
        if self.export is not None:
            return {"export": self.export}
        # the spec sets export or both of these
        assert self.model is not None
        assert self.weights is not None
        return {"model": self.model, "weights": self.weights}


@dataclass(frozen=True)
class TeacherSource:
    """What builds a teacher: its architecture, the weights it loads, where its normalisation comes from."""

    model: str
    weights: str  # a torchvision weights name or a state_dict file (an export's model.pt)
    trained_with: str  # the weights its training started from: models.normalization(model, trained_with)
    val_accuracy: float | None  # an export's, from its trial.json
    identity: tuple  # what a worker's teacher cache is keyed by: a file rewritten since is another teacher


def resolve(teacher: TeacherSpec) -> TeacherSource:
    """The teacher's source, its export's files read; a SpecError naming the field for an export that is
    missing or incomplete."""
    if teacher.export is None:
        assert teacher.model is not None
        assert teacher.weights is not None
        identity = ("torchvision", teacher.model, teacher.weights, *_file_stamp(teacher.weights))
        return TeacherSource(teacher.model, teacher.weights, teacher.weights, None, identity)
    folder = Path(teacher.export)
    if not folder.exists():
        raise SpecError(EXPORT_AT, f"no export at {teacher.export}: run the teacher's search, then "
                                   "`hpsearch best --export` writes it there")
    if not folder.is_dir():
        raise SpecError(EXPORT_AT, f"{teacher.export} is a file, not an export folder")
    missing = [name for name in ("best.yaml", "model.pt") if not (folder / name).is_file()]
    if missing:
        raise SpecError(EXPORT_AT, f"{teacher.export} lacks {' and '.join(missing)} (an export holds best.yaml, "
                                   "model.pt and trial.json)")
    model, trained_with = _exported_model(folder / "best.yaml")
    weights = str(folder / "model.pt")
    identity = ("export", str(folder.resolve()), *_file_stamp(weights))
    return TeacherSource(model, weights, trained_with, _val_accuracy(folder / "trial.json"), identity)


def check_teacher(teacher: TeacherSpec, data: DataConfig) -> None:
    """Refuse a teacher that cannot teach this task: one it cannot read, that predicts other classes, or that
    cannot take the task's images. An export that does not exist yet is left to `run` (see the module's doc)."""
    if teacher.export is not None and not Path(teacher.export).exists():
        return
    source = resolve(teacher)
    from hpsearch.engine import datasets as data_mod  # torch: only a spec with a teacher pays it
    from hpsearch.engine import models
    from hpsearch.engine import teacher as teacher_mod

    def refused(field: str, problem: str) -> SpecError:
        """An export's every problem is its folder's; a torchvision teacher's, the field's (model or weights)."""
        return SpecError(EXPORT_AT if teacher.export is not None else f"task.teacher.{field}", problem)

    if teacher.export is not None and source.model not in (known := models.list_classification_models()):
        raise refused("model", f"{Path(teacher.export, 'best.yaml')}: {checks.unknown('model', source.model, known)}")
    try:
        classes = teacher_mod.predicted_classes(source.model, source.weights)
    except Exception as e:  # an unreadable file, or a state_dict of another model
        raise refused("weights", str(e)) from None
    wanted = data_mod.class_count(data)
    if wanted is not None and classes != wanted:
        what = source.weights if teacher.export is not None else f"{source.model} with weights {source.weights}"
        raise refused("weights", f"{what} predicts {classes} classes; the task ({data.name}) has {wanted}")
    size = data.pixels
    problem = models.input_problem(source.model, size)
    if problem is not None:
        raise refused("model", f"{source.model} cannot take the task's {size}x{size} images ({problem})")


def check_distillation(train: dict, space: dict, teacher: TeacherSpec | None) -> None:
    """Refuse distill_alpha or distill_temperature, fixed or searched, in a spec without a teacher."""
    if teacher is not None:
        return
    for section, values in (("train", train), ("search_space", space)):
        for name in DISTILL_HPARAMS:
            if name in values:
                raise SpecError(f"{section}.{name}", "applies only with a teacher: set task.teacher, or remove it")


def teacher_params(teacher: TeacherSpec) -> dict[str, Any]:
    """The teacher's identity for the study's parent run: export folder or model, weights, val accuracy if known.
    Refuses an export that does not exist (yet): the check `hpsearch validate` leaves to `run`."""
    source = resolve(teacher)
    params: dict[str, Any] = {"teacher": teacher.export or teacher.model, "teacher_model": source.model,
                              "teacher_weights": source.weights}
    if source.val_accuracy is not None:
        params["teacher_val_accuracy"] = source.val_accuracy
    return params


def _file_stamp(weights: str) -> tuple:
    """(absolute path, mtime, size) of a weights file; () for a torchvision weights name."""
    try:
        stat = os.stat(weights)
    except OSError:
        return ()
    return os.path.abspath(weights), stat.st_mtime_ns, stat.st_size


def _exported_model(best_yaml: Path) -> tuple[str, str]:
    """(model name, weights) from an export's best.yaml, `task.model` as the spec reads it."""
    where = str(best_yaml)
    try:
        data = strict_yaml.load(strict_yaml.read_text(where), where)
    except SpecError as e:
        raise SpecError(EXPORT_AT, str(e)) from None
    task = data.get("task") if isinstance(data, dict) else None
    model = task.get("model") if isinstance(task, dict) else None
    if isinstance(model, str):
        model = {"name": model}
    name = model.get("name") if isinstance(model, dict) else None
    weights = model.get("weights", "DEFAULT") if isinstance(model, dict) else None
    if not isinstance(name, str) or not isinstance(weights, str | None):
        raise SpecError(EXPORT_AT, f"{where}: names no task.model: not a best.yaml that hpsearch exported")
    return name, weights or "none"


def _val_accuracy(trial_json: Path) -> float | None:
    """The exported trial's validation accuracy, when its study was tuned on it (trial.json is informative only:
    missing or not JSON, there is none; one that cannot be read safely is refused, naming it)."""
    if not trial_json.exists():
        return None
    try:
        record = json.loads(strict_yaml.read_text(trial_json, kind="trial record"))
    except SpecError as e:  # a FIFO, a device, a huge file: the export's problem, named
        raise SpecError(EXPORT_AT, str(e)) from None
    except RecursionError:  # else blamed on the space file by load_spec's net
        raise SpecError(EXPORT_AT, f"{trial_json}: nested too deeply to read") from None
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("metric") != "val_accuracy":
        return None
    value = record.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if checks.is_finite(value) else None
