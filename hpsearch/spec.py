"""The search-space file: YAML → typed, validated, frozen dataclasses.

Every refusal is a SpecError that names the dotted path of the offending field
(`search_space.lr.low: must be > 0, got -1`), so the CLI can print one line and exit 2.
Validation happens here, once, so the study, workers and objective can trust a Spec.

Defaults chosen here (and filled in by `Spec.to_dict()`, so `hpsearch validate` shows them):
- study.name: the file's stem; metric val_accuracy; direction follows the metric; n_trials 20.
- sampler: tpe with seed 0, and any sampler without a seed gets seed 0, so runs reproduce.
- pruner: median with n_warmup_steps 2. Steps are epochs completed (1-based), so this never
  judges a trial on its first epoch alone.
- task.model.weights: DEFAULT (a fine-tuning tool starts from pretrained weights).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from hpsearch.params import (
    AUGMENTS,
    CHECKPOINT_POLICIES,
    CUDA_GRAPH_MODES,
    DATASETS,
    DIRECTIONS,
    HPARAM_TYPES,
    HYPERPARAMETERS,
    METRICS,
    TRAIN_SETTINGS,
    HParams,
    check_hparam_value,
)


class SpecError(Exception):
    """A refused spec field: `path` is its dotted location, `message` says what is wrong."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# ---------------------------------------------------------------------------- the typed spec


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    kwargs: dict  # the sampler's own keywords, seed included


@dataclass(frozen=True)
class PrunerSpec:
    name: str
    kwargs: dict  # the pruner's own keywords; patient's wrapped_pruner is a nested PrunerSpec


@dataclass(frozen=True)
class StudySpec:
    name: str
    metric: str
    direction: str
    n_trials: int
    timeout: float | None  # seconds
    sampler: SamplerSpec
    pruner: PrunerSpec
    storage: str | None

    @property
    def seed(self) -> int:
        return self.sampler.kwargs.get("seed", 0)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: str  # "none" | "DEFAULT" | a weights enum member name | a file path


@dataclass(frozen=True)
class DataSpec:
    name: str
    root: str = "data"
    val_fraction: float = 0.1
    image_size: int | None = None  # None: the dataset's own size
    download: bool = False
    augment: str = "standard"
    num_classes: int = 10  # fake only
    samples: int = 512  # fake only
    in_memory: str | bool = "auto"


@dataclass(frozen=True)
class TaskSpec:
    model: ModelSpec
    data: DataSpec


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None
    # {parameter: allowed values}; the parameter exists only when every named one takes an allowed value.
    when: dict[str, tuple] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            out: dict[str, Any] = {"type": self.type, "choices": list(self.choices)}
        else:
            out = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {k: v[0] if len(v) == 1 else list(v) for k, v in self.when.items()}
        return out


@dataclass(frozen=True)
class ResourcesSpec:
    devices: str | tuple[int, ...] = "auto"  # "auto" | "cpu" | GPU indices
    trials_per_device: int | str = "auto"  # "auto": 1 per GPU; on CPUs the measured faster split of the cores


@dataclass(frozen=True)
class TrackingSpec:
    uri: str = "sqlite:///mlruns/mlflow.db"
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
                "metric": s.metric,
                "direction": s.direction,
                "n_trials": s.n_trials,
                "timeout": s.timeout,
                "sampler": {"name": s.sampler.name, **s.sampler.kwargs},
                "pruner": _pruner_to_dict(s.pruner),
                "storage": s.storage,
            },
            "task": {
                "model": dataclasses.asdict(self.task.model),
                "data": dataclasses.asdict(self.task.data),
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


# ---------------------------------------------------------------------------- entry points


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate a search-space file."""
    where = os.fspath(path)
    try:
        text = Path(where).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(where, "no such file") from None
    except IsADirectoryError:
        raise SpecError(where, "is a directory, not a file") from None
    except UnicodeDecodeError:
        raise SpecError(where, "is not UTF-8 text") from None
    except OSError as e:
        raise SpecError(where, e.strerror or str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "malformed"
        where_in = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(where, f"invalid YAML{where_in}: {problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(where, f"invalid YAML: {e}") from None
    if data is None:
        raise SpecError(where, "empty file")
    return parse_spec(data, source=where)


SECTIONS = ("study", "task", "train", "search_space", "resources", "tracking")


def parse_spec(data: Any, source: str | None = None) -> Spec:
    """Validate a mapping (a parsed YAML file) into a Spec; `source` is the file, for the default study name."""
    if not isinstance(data, dict):
        raise SpecError(source or "spec", f"must be a mapping of sections ({', '.join(SECTIONS)}), got {_kind(data)}")
    _check_keys(data, SECTIONS, "")
    for section in ("study", "task"):
        if section not in data:
            raise SpecError(section, "required")
    study = _parse_study(data["study"], source)
    task = _parse_task(data["task"])
    train, settings = _parse_train(data.get("train"))
    search_space = _parse_search_space(data.get("search_space"), train)
    _check_plateau_gamma(train, search_space)
    _probe_sampler(study.sampler, search_space)
    return Spec(
        study=study,
        task=task,
        train=train,
        settings=settings,
        search_space=search_space,
        resources=_parse_resources(data.get("resources")),
        tracking=_parse_tracking(data.get("tracking"), study.name),
        source=source,
    )


def apply_overrides(
    spec: Spec,
    *,
    n_trials: Any = None,
    timeout: Any = None,
    devices: Any = None,
    trials_per_device: Any = None,
    storage: Any = None,
    tracking_uri: Any = None,
    study_name: Any = None,
    seed: Any = None,
) -> Spec:
    """A copy with the CLI's options (None: not given) replacing the file's values, validated like the
    file and refused under the option's name (`--n-trials: must be > 0, got 0`)."""
    study, resources, tracking = spec.study, spec.resources, spec.tracking
    if n_trials is not None:
        study = dataclasses.replace(study, n_trials=_positive_int(_int_text(n_trials), "--n-trials"))
    if timeout is not None:
        study = dataclasses.replace(study, timeout=_duration(timeout, "--timeout"))
    if storage is not None:
        study = dataclasses.replace(study, storage=_text(storage, "--storage"))
    if seed is not None:
        kwargs = {**study.sampler.kwargs, "seed": _seed(_int_text(seed), "--seed")}
        study = dataclasses.replace(study, sampler=dataclasses.replace(study.sampler, kwargs=kwargs))
    if study_name is not None:
        name = _study_name(study_name, "--study-name")
        if tracking.experiment == study.name:  # the experiment was defaulted to the study name: follow it
            tracking = dataclasses.replace(tracking, experiment=name)
        study = dataclasses.replace(study, name=name)
    if devices is not None:
        resources = dataclasses.replace(resources, devices=_devices(devices, "--devices"))
    if trials_per_device is not None:
        resources = dataclasses.replace(
            resources, trials_per_device=_trials_per_device(_int_text(trials_per_device), "--trials-per-device")
        )
    if tracking_uri is not None:
        tracking = dataclasses.replace(tracking, uri=_text(tracking_uri, "--tracking-uri"))
    return dataclasses.replace(spec, study=study, resources=resources, tracking=tracking)


def fixed_spec(spec: Spec, values: dict[str, Any]) -> Spec:
    """A copy that trains `values` (e.g. the best trial's params) merged into train, with nothing searched."""
    train = dict(spec.train)
    for name, value in values.items():
        at = f"train.{name}"
        _hparam_name(name, at)
        train[name] = _hparam_value(name, value, at)
    _check_plateau_gamma(train, {})
    return dataclasses.replace(spec, train=train, search_space={})


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: Any) -> float:
    """Seconds in '8h', '30m', '90s', '1h30m', '2d', or a plain number of seconds; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and math.isfinite(text):
        return float(text)
    if isinstance(text, str):
        compact = text.replace(" ", "").lower()
        if _SECONDS.fullmatch(compact):
            return float(compact)
        match = _DURATION.fullmatch(compact)
        if compact and match:
            days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            return days * 86400 + hours * 3600 + minutes * 60 + seconds
    raise ValueError(f"must be a duration like 8h, 30m, 90s or 1h30m, got {text!r}")


# ---------------------------------------------------------------------------- sections


def _parse_study(raw: Any, source: str | None) -> StudySpec:
    path = "study"
    raw = _section(raw, path)
    _check_keys(raw, ("name", "metric", "direction", "n_trials", "timeout", "sampler", "pruner", "storage"), path)
    if "name" in raw:
        name = _study_name(raw["name"], "study.name")
    elif source is None:
        raise SpecError("study.name", "required (there is no file to take the name from)")
    else:
        stem = Path(source).stem
        if not _NAME.fullmatch(stem):
            raise SpecError("study.name", f"the file's stem {stem!r} is not a valid study name: set study.name")
        name = stem
    metric = _one_of(raw.get("metric", "val_accuracy"), METRICS, "study.metric")
    natural = "maximize" if metric == "val_accuracy" else "minimize"
    direction = _one_of(raw.get("direction", natural), DIRECTIONS, "study.direction")
    if direction != natural:
        raise SpecError("study.direction", f"must be {natural} for {metric}, got {direction!r}")
    timeout = raw.get("timeout")
    return StudySpec(
        name=name,
        metric=metric,
        direction=direction,
        n_trials=_positive_int(raw.get("n_trials", 20), "study.n_trials"),
        timeout=None if timeout is None else _duration(timeout, "study.timeout"),
        sampler=_parse_sampler(raw.get("sampler"), "study.sampler"),
        pruner=_parse_pruner(raw.get("pruner"), "study.pruner", PrunerSpec("median", {"n_warmup_steps": 2})),
        storage=None if raw.get("storage") is None else _text(raw["storage"], "study.storage"),
    )


def _named(raw: Any, path: str, kind: str, table: dict) -> tuple[str, dict]:
    """Split `{name: x, **kwargs}` (or the bare string `x`) into a checked name and the keywords."""
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = _section(raw, path)
    if "name" not in raw:
        raise SpecError(f"{path}.name", f"required ({', '.join(table)})")
    name = raw["name"]
    if not isinstance(name, str) or name not in table:
        raise SpecError(f"{path}.name", _unknown(kind, name, table))
    return name, {k: v for k, v in raw.items() if k != "name"}


def _parse_sampler(raw: Any, path: str) -> SamplerSpec:
    from hpsearch import registry  # registry imports SpecError from here

    if raw is None:
        raw = {"name": "tpe"}
    name, kwargs = _named(raw, path, "sampler", registry.SAMPLERS)
    registry.check_kwargs("sampler", name, kwargs, path)
    kwargs["seed"] = _seed(kwargs.get("seed", 0), f"{path}.seed")
    return SamplerSpec(name, kwargs)


def _parse_pruner(raw: Any, path: str, default: PrunerSpec) -> PrunerSpec:
    from hpsearch import registry

    if raw is None:
        return default
    name, kwargs = _named(raw, path, "pruner", registry.PRUNERS)
    if name == "patient":
        kwargs["wrapped_pruner"] = _parse_pruner(
            kwargs.get("wrapped_pruner"), f"{path}.wrapped_pruner", PrunerSpec("none", {})
        )
    registry.check_kwargs("pruner", name, kwargs, path)
    pruner = PrunerSpec(name, kwargs)
    _probe(lambda: registry.build_pruner(pruner), path)
    return pruner


def _probe_sampler(sampler: SamplerSpec, search_space: dict[str, ParamSpec]) -> None:
    from hpsearch import registry

    _probe(lambda: registry.build_sampler(sampler, search_space), "study.sampler")


def _probe(build, path: str) -> None:
    """Build once now so that a value the constructor refuses is reported as a spec error, not mid-run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning etc. belong to the real run
            build()
    except SpecError:
        raise
    except Exception as e:  # any refusal by the library's constructor is the user's value's fault
        raise SpecError(path, str(e)) from None


def _parse_task(raw: Any) -> TaskSpec:
    raw = _section(raw, "task")
    _check_keys(raw, ("model", "data"), "task")
    return TaskSpec(model=_parse_model(raw.get("model")), data=_parse_data(raw.get("data")))


def _parse_model(raw: Any) -> ModelSpec:
    path = "task.model"
    raw = _section({"name": raw} if isinstance(raw, str) else raw, path)
    _check_keys(raw, ("name", "weights"), path)
    if "name" not in raw:
        raise SpecError(f"{path}.name", "required")
    name = raw["name"]
    models = _torchvision_models()
    if name not in models:
        raise SpecError(f"{path}.name", _unknown("model", name, models))
    return ModelSpec(name=name, weights=_weights(name, raw.get("weights", "DEFAULT"), f"{path}.weights"))


def _weights(model: str, value: Any, path: str) -> str:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return "none"
    if not isinstance(value, str):
        raise SpecError(path, f"must be none, DEFAULT, a weights name or a file path, got {value!r}")
    if value.upper() == "DEFAULT":
        return "DEFAULT"
    if "/" in value or os.sep in value or value.endswith((".pt", ".pth", ".bin")):
        if not os.path.isfile(value):  # relative to the working directory, like any CLI path
            raise SpecError(path, f"file not found: {value}")
        return value
    import torchvision

    enum = torchvision.models.get_model_weights(model)
    member = value.removeprefix(f"{enum.__name__}.")  # 'MobileNet_V2_Weights.IMAGENET1K_V2' works too
    if member not in enum.__members__:
        valid = ", ".join(["none", *enum.__members__])
        raise SpecError(path, f"{model} has no weights {value!r} (valid: {valid}, or a path to a state_dict file)")
    return member


@functools.cache
def _torchvision_models() -> tuple[str, ...]:
    import torchvision  # ~1 s; only a spec that names a model pays it

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _parse_data(raw: Any) -> DataSpec:
    path = "task.data"
    raw = _section({"name": raw} if isinstance(raw, str) else raw, path)
    _check_keys(raw, [f.name for f in dataclasses.fields(DataSpec)], path)
    if "name" not in raw:
        raise SpecError(f"{path}.name", "required")
    d = DataSpec(name="_")  # the defaults
    val_fraction = _number(raw.get("val_fraction", d.val_fraction), f"{path}.val_fraction")
    if not 0 < val_fraction < 1:
        raise SpecError(f"{path}.val_fraction", f"must be in (0, 1), got {val_fraction!r}")
    image_size = raw.get("image_size", d.image_size)
    in_memory = raw.get("in_memory", d.in_memory)
    if not (in_memory == "auto" or isinstance(in_memory, bool)):
        raise SpecError(f"{path}.in_memory", f"must be auto, true or false, got {in_memory!r}")
    return DataSpec(
        name=_one_of(raw["name"], DATASETS, f"{path}.name"),
        root=_text(raw.get("root", d.root), f"{path}.root"),
        val_fraction=float(val_fraction),
        image_size=None if image_size is None else _positive_int(image_size, f"{path}.image_size"),
        download=_bool(raw.get("download", d.download), f"{path}.download"),
        augment=_one_of(raw.get("augment", d.augment), AUGMENTS, f"{path}.augment"),
        num_classes=_positive_int(raw.get("num_classes", d.num_classes), f"{path}.num_classes"),
        samples=_positive_int(raw.get("samples", d.samples), f"{path}.samples"),
        in_memory=in_memory,
    )


def _parse_train(raw: Any) -> tuple[dict, dict]:
    raw = _section(raw, "train")
    train: dict[str, Any] = {}
    settings = dict(TRAIN_SETTINGS)
    for key, value in raw.items():
        at = f"train.{key}"
        if key in TRAIN_SETTINGS:
            # YAML 1.1 reads a bare `off` as false; take it as meant. Every setting is auto|off.
            settings[key] = _one_of("off" if value is False else value, CUDA_GRAPH_MODES, at)
        else:
            _hparam_name(key, at, also=tuple(TRAIN_SETTINGS))
            train[key] = _hparam_value(key, value, at)
    return train, settings


_PARAM_TYPES = ("float", "int", "categorical")


def _parse_search_space(raw: Any, train: dict) -> dict[str, ParamSpec]:
    raw = _section(raw, "search_space")
    space: dict[str, ParamSpec] = {}
    for name, entry in raw.items():
        at = f"search_space.{name}"
        if name in TRAIN_SETTINGS:
            raise SpecError(at, "is a setting, not a hyperparameter: set it under train")
        _hparam_name(name, at)
        space[name] = _parse_param(name, entry, at)
    for p in space.values():
        for cond, values in (p.when or {}).items():
            _check_condition(p.name, cond, values, space, train)
    _check_no_cycles(space)
    return space


def _parse_param(name: str, entry: Any, at: str) -> ParamSpec:
    if not isinstance(entry, dict):
        raise SpecError(at, f"must be a mapping with a type (to fix a value, put it under train), got {entry!r}")
    if "type" not in entry:
        raise SpecError(f"{at}.type", f"required ({', '.join(_PARAM_TYPES)})")
    kind = _one_of(entry["type"], _PARAM_TYPES, f"{at}.type")
    allowed = ("type", "choices", "when") if kind == "categorical" else ("type", "low", "high", "log", "step", "when")
    _check_keys(entry, allowed, at)
    when = _parse_when(entry["when"], f"{at}.when") if "when" in entry else None
    hp_type = HPARAM_TYPES[name]
    if kind == "categorical":
        return ParamSpec(name, kind, choices=_choices(name, entry.get("choices"), f"{at}.choices"), when=when)
    if hp_type is str or hp_type is bool:
        raise SpecError(f"{at}.type", f"{name} takes one of a fixed set of values: use categorical, got {kind!r}")
    if hp_type is int and kind == "float":
        raise SpecError(f"{at}.type", f"{name} takes whole numbers: use int or categorical, got 'float'")
    if hp_type is float and kind == "int":
        raise SpecError(f"{at}.type", f"{name} takes real numbers: use float or categorical, got 'int'")

    read = _int if kind == "int" else _number
    for bound in ("low", "high"):
        if bound not in entry:
            raise SpecError(f"{at}.{bound}", "required")
    low, high = read(entry["low"], f"{at}.low"), read(entry["high"], f"{at}.high")
    log = _bool(entry.get("log", False), f"{at}.log")
    if log and kind == "float" and low <= 0:
        raise SpecError(f"{at}.low", f"must be > 0 when log is true, got {low!r}")
    if log and kind == "int" and low < 1:
        raise SpecError(f"{at}.low", f"must be >= 1 when log is true, got {low!r}")
    if low >= high:
        raise SpecError(at, f"low must be < high, got low={low!r}, high={high!r}")
    for bound, value in (("low", low), ("high", high)):
        problem = check_hparam_value(name, value)
        if problem:
            raise SpecError(f"{at}.{bound}", problem)
    step = entry.get("step")
    if step is not None:
        step = read(step, f"{at}.step")
        if step <= 0:
            raise SpecError(f"{at}.step", f"must be > 0, got {step!r}")
        if log:
            raise SpecError(f"{at}.step", "cannot be combined with log: true")
        # Optuna would silently move `high` down to the grid; say so instead.
        if (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)) != 0:
            raise SpecError(f"{at}.step", f"high - low must be a multiple of step, got low={low!r}, high={high!r}, "
                                          f"step={step!r}")
    if kind == "float":
        low, high, step = float(low), float(high), None if step is None else float(step)
    return ParamSpec(name, kind, low=low, high=high, log=log, step=step, when=when)


def _choices(name: str, raw: Any, path: str) -> tuple:
    if raw is None:
        raise SpecError(path, "required")
    if not isinstance(raw, list) or not raw:
        raise SpecError(path, f"must be a non-empty list, got {raw!r}")
    choices: list[Any] = []
    for i, value in enumerate(raw):
        value = _hparam_value(name, value, f"{path}[{i}]")
        if value in choices:
            raise SpecError(f"{path}[{i}]", f"{value!r} is already choices[{choices.index(value)}]")
        choices.append(value)
    return tuple(choices)


def _parse_when(raw: Any, path: str) -> dict[str, tuple]:
    if not isinstance(raw, dict) or not raw:
        raise SpecError(path, f"must be a mapping of parameter: value or [values], got {raw!r}")
    when = {}
    for cond, values in raw.items():
        values = tuple(values) if isinstance(values, list) else (values,)
        if not values:
            raise SpecError(f"{path}.{cond}", "must name at least one value")
        when[cond] = values
    return when


def _check_condition(name: str, cond: Any, values: tuple, space: dict[str, ParamSpec], train: dict) -> None:
    """`cond` must be another parameter, and each value one that parameter can take."""
    at = f"search_space.{name}.when.{cond}"
    if cond == name:
        raise SpecError(at, "a parameter cannot depend on itself")
    if cond in space:
        target = space[cond]
        for value in values:
            if target.type == "categorical":
                if value not in target.choices:
                    valid = ", ".join(map(str, target.choices))
                    raise SpecError(at, f"{cond} never takes {value!r} (its choices: {valid})")
            elif target.type == "int":
                on_grid = isinstance(value, int) and not isinstance(value, bool) and (
                    target.low <= value <= target.high and (value - target.low) % (target.step or 1) == 0
                )
                if not on_grid:
                    raise SpecError(at, f"{cond} never takes {value!r} (it ranges over {target.low}..{target.high})")
            else:
                raise SpecError(at, f"{cond} is a float range; a condition needs a categorical or int parameter")
    elif cond in train:
        values = tuple(_hparam_value(cond, v, at) for v in values)
        if train[cond] not in values:
            raise SpecError(at, f"never true: train.{cond} is {train[cond]!r}")
    else:
        known = [*space, *train]
        close = difflib.get_close_matches(str(cond), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(at, f"{cond!r} is not a parameter in search_space or train{hint}")


def _check_no_cycles(space: dict[str, ParamSpec]) -> None:
    def visit(name: str, trail: tuple[str, ...]) -> None:
        for cond in space[name].when or {}:
            if cond in trail:
                loop = " → ".join((*trail[trail.index(cond):], cond))
                raise SpecError(f"search_space.{name}.when.{cond}", f"circular condition: {loop}")
            if cond in space:
                visit(cond, (*trail, cond))

    for name in space:
        visit(name, (name,))


def _check_plateau_gamma(train: dict, space: dict[str, ParamSpec]) -> None:
    """plateau cuts lr by the factor gamma, which ReduceLROnPlateau needs < 1: refuse a gamma >= 1 that
    a trial could pair with plateau, rather than fail that trial when it builds its schedule."""
    scheduler, gamma = space.get("scheduler"), space.get("gamma")
    fixed = train.get("scheduler", _HPARAM_DEFAULTS["scheduler"])  # also the fallback of a conditional one
    possible = {fixed} if scheduler is None else {*scheduler.choices, *([fixed] if scheduler.when else [])}
    if "plateau" not in possible:
        return
    problem = "must be < 1 when scheduler is plateau (the factor that cuts lr), got {!r}"
    # gamma searched only for some schedulers: with plateau, it is searched when plateau is one of them.
    only_for = gamma.when["scheduler"] if gamma and gamma.when and set(gamma.when) == {"scheduler"} else None
    if gamma is not None and (only_for is None or "plateau" in only_for):
        if gamma.type == "categorical":
            for i, value in enumerate(gamma.choices):
                if value >= 1:
                    raise SpecError(f"search_space.gamma.choices[{i}]", problem.format(value))
        elif gamma.high >= 1:
            raise SpecError("search_space.gamma.high", problem.format(gamma.high))
    # train's gamma trains whenever a searched one is absent (not searched, or its when: is false).
    if gamma is None:
        fallback_meets_plateau = True
    elif gamma.when is None:
        fallback_meets_plateau = False
    elif only_for is not None and "plateau" in only_for:  # absent with plateau only if scheduler is absent too
        fallback_meets_plateau = scheduler is not None and scheduler.when is not None and fixed == "plateau"
    else:
        fallback_meets_plateau = True
    value = train.get("gamma", _HPARAM_DEFAULTS["gamma"])
    if fallback_meets_plateau and value >= 1:
        raise SpecError("train.gamma", problem.format(value))


def _parse_resources(raw: Any) -> ResourcesSpec:
    path = "resources"
    raw = _section(raw, path)
    _check_keys(raw, ("devices", "trials_per_device"), path)
    return ResourcesSpec(
        devices=_devices(raw.get("devices", "auto"), f"{path}.devices"),
        trials_per_device=_trials_per_device(raw.get("trials_per_device", "auto"), f"{path}.trials_per_device"),
    )


def _trials_per_device(value: Any, path: str) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str):
        raise SpecError(path, f"must be auto or a whole number > 0, got {value!r}")
    return _positive_int(value, path)


def _parse_tracking(raw: Any, study_name: str) -> TrackingSpec:
    path = "tracking"
    raw = _section(raw, path)
    _check_keys(raw, ("uri", "experiment", "checkpoints"), path)
    d = TrackingSpec()
    return TrackingSpec(
        uri=_text(raw.get("uri", d.uri), f"{path}.uri"),
        experiment=_text(raw.get("experiment", study_name), f"{path}.experiment"),
        checkpoints=_one_of(raw.get("checkpoints", d.checkpoints), CHECKPOINT_POLICIES, f"{path}.checkpoints"),
    )


# ---------------------------------------------------------------------------- field checks

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HPARAM_DEFAULTS = HParams().as_dict()
# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; a number is clearly meant.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list"}.get(type(value), repr(value))


def _section(raw: Any, path: str) -> dict:
    """A mapping section; an empty one (`train:` with nothing under it) reads as {}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(path, f"must be a mapping, got {_kind(raw)}")
    return raw


# Long names people write for short ones: `lern_rate` is far from `lr` but close to `learning_rate`.
_ALIASES = {"learning_rate": "lr", "bs": "batch_size", "wd": "weight_decay"}


def _unknown(kind: str, value: Any, valid) -> str:
    valid = list(valid)
    candidates = valid + [alias for alias, name in _ALIASES.items() if name in valid]
    close = difflib.get_close_matches(str(value), candidates, n=1)
    hint = f"did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else f"valid: {', '.join(valid)}"
    return f"unknown {kind} {value!r} ({hint})"


def _check_keys(mapping: dict, allowed, path: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise SpecError(f"{path}.{key}" if path else str(key), _unknown("key", key, allowed))


def _hparam_name(name: Any, at: str, also: tuple[str, ...] = ()) -> None:
    if name not in HYPERPARAMETERS:
        raise SpecError(at, _unknown("hyperparameter", name, (*HYPERPARAMETERS, *also)))


def _hparam_value(name: str, value: Any, path: str) -> Any:
    """A checked hyperparameter value, as its declared type (64.0 → 64 for batch_size)."""
    if value is None and _HPARAM_DEFAULTS[name] is None:
        return None  # e.g. patience: null keeps early stopping off
    kind = HPARAM_TYPES[name]
    if kind in (int, float) and isinstance(value, str) and _EXPONENT.fullmatch(value):
        value = float(value)
    problem = check_hparam_value(name, value)
    if problem:
        raise SpecError(path, problem)
    return kind(value) if kind in (int, float) else value


def _one_of(value: Any, options, path: str) -> Any:
    if value not in options:
        raise SpecError(path, f"must be one of {', '.join(options)}, got {value!r}")
    return value


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {value!r}")
    return value


def _positive_int(value: Any, path: str) -> int:
    value = _int(value, path)
    if value <= 0:
        raise SpecError(path, f"must be > 0, got {value!r}")
    return value


def _int_text(value: Any) -> Any:
    """CLI options may arrive as text: '12' → 12; anything else is left for the check to refuse."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def _number(value: Any, path: str) -> int | float:
    if isinstance(value, str) and _EXPONENT.fullmatch(value):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number, got {value!r}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, got {value!r}")
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, f"must be a non-empty string, got {value!r}")
    return value


def _study_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise SpecError(path, f"must be letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _seed(value: Any, path: str) -> int:
    value = _int(value, path)
    if not 0 <= value < 2**32:  # numpy's seed range
        raise SpecError(path, f"must be in [0, {2**32 - 1}], got {value!r}")
    return value


def _duration(value: Any, path: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise SpecError(path, str(e)) from None
    if seconds <= 0:
        raise SpecError(path, f"must be > 0, got {value!r}")
    return seconds


def _devices(value: Any, path: str) -> str | tuple[int, ...]:
    if value in ("auto", "cpu"):
        return value
    indices: Any = value
    if isinstance(value, int) and not isinstance(value, bool):
        indices = [value]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        indices = [int(p) if p.isdigit() else p for p in parts]
    if (
        not isinstance(indices, (list, tuple))
        or not indices
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)
    ):
        raise SpecError(path, f"must be auto, cpu, or GPU indices like 0,1 or [0, 1], got {value!r}")
    if len(set(indices)) != len(indices):
        raise SpecError(path, f"lists a GPU twice, got {value!r}")
    return tuple(indices)
