"""The search-space file: YAML → typed, validated, frozen dataclasses.

Every refusal is a SpecError that names the dotted path of the offending field
(`search_space.lr.low: must be > 0, got -1`), so the CLI can print one line and exit 2.
Validation happens here, once (in the process that reads the file), so the study, workers and
objective can trust a Spec. The YAML is read by spec.strict_yaml, single values are checked in core.checks,
`search_space:` in search.space, sampler and pruner keywords in search.components, `task.data` values by
core.data_config.DataConfig itself, `task.teacher` (knowledge distillation) in spec.teacher_spec, model and
weights names against spec.model_catalog (no torch import for a model it holds). The dataclasses: spec.spec_types.

Defaults chosen here (and filled in by `Spec.to_dict()`, so `hpsearch validate` shows them):
- study.name: the file's stem; metric val_accuracy; direction follows the metric; n_trials 20.
- sampler: tpe with seed 0, and any sampler without a seed gets seed 0, so runs reproduce.
  Unless the file says, TPE's n_startup_trials follows n_trials (samplers.tpe_startup_trials; the
  file's values are kept as written, so a study resumed with more trials starts more at random).
- pruner: median with n_warmup_steps 2. Steps are epochs completed (1-based), so this never
  judges a trial on its first epoch alone. With study.objectives: none (Optuna cannot prune those).
- task.model.weights: DEFAULT (a fine-tuning tool starts from pretrained weights).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from hpsearch.core import checks, credentials
from hpsearch.core.checks import HPARAM_DEFAULTS, SpecError, parse_duration
from hpsearch.core.data_config import DataConfig, DataConfigError, is_weights_path
from hpsearch.core.hparams import (
    CHECKPOINT_POLICIES,
    COMPRESSION_HPARAMS,
    DIRECTIONS,
    METRICS,
    OBJECTIVE_METRICS,
    SETTING_MODES,
    TASK_CHOICES,
    TRAIN_SETTINGS,
    natural_direction,
)
from hpsearch.search import components as search_components
from hpsearch.search import samplers
from hpsearch.search.components import PrunerSpec, SamplerSpec
from hpsearch.search.space import ParamSpec, check_plateau_gamma, parse_search_space
from hpsearch.spec import model_catalog, strict_yaml
from hpsearch.spec.finetune_checks import check_finetuning
from hpsearch.spec.pbt_spec import check_pbt, check_population, parse_scheduler
from hpsearch.spec.spec_types import (
    ConfirmSpec,
    ModelSpec,
    Objective,
    ResourcesSpec,
    Spec,
    StudySpec,
    TaskSpec,
    TrackingSpec,
)
from hpsearch.spec.teacher_spec import TeacherSpec, check_distillation, check_teacher

__all__ = [
    "DataConfig", "ModelSpec", "Objective", "ParamSpec", "PrunerSpec", "ResourcesSpec", "SamplerSpec", "Spec",
    "SpecError", "StudySpec", "TaskSpec", "TeacherSpec", "TrackingSpec", "apply_overrides", "fixed_spec", "load_spec",
    "parse_duration", "parse_spec",
]


# ---------------------------------------------------------------------------- entry points




def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate a search-space file."""
    where = os.fspath(path)
    text = strict_yaml.read_text(where)
    try:
        data = strict_yaml.load(text, where)
        if data is None:
            raise SpecError(where, "empty file")
        credentials.learn(data)  # its store URLs' passwords, hidden from every message of this process
        return parse_spec(data, source=where)
    except RecursionError:  # strict_yaml caps nesting; this is the net under any other deep walk
        raise SpecError(where, "nested too deeply to read") from None


SECTIONS = ("study", "task", "train", "search_space", "resources", "tracking")


def parse_spec(data: Any, source: str | None = None) -> Spec:
    """Validate a mapping (a parsed YAML file) into a Spec; `source` is the file, for the default study name."""
    if not isinstance(data, dict):
        sections = ", ".join(SECTIONS)
        raise SpecError(source or "spec", f"must be a mapping of sections ({sections}), got {checks.describe(data)}")
    checks.check_keys(data, SECTIONS, "")
    for section in ("study", "task"):
        if section not in data:
            raise SpecError(section, "required")
    study = _parse_study(data["study"], source)
    task = _parse_task(data["task"])
    train, settings = _parse_train(data.get("train"))
    search_space = parse_search_space(data.get("search_space"), train)
    check_plateau_gamma(train, search_space)
    _check_task_choices(task, search_space)
    for model in _choices_of("model", search_space, task.model.name):
        check_finetuning(train, search_space, model)
    check_distillation(train, search_space, task.teacher)
    _check_compression(study, train, search_space)
    if study.scheduler is not None:
        study = dataclasses.replace(study, scheduler=check_pbt(study.scheduler, train, search_space,
                                                               "study.scheduler"))
    if task.teacher is not None:
        for size in _choices_of("image_size", search_space, task.data.image_size):
            check_teacher(task.teacher, dataclasses.replace(task.data, image_size=size))
    _probe(lambda: samplers.build_sampler(study.sampler, search_space), "study.sampler")
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
        study = dataclasses.replace(study, n_trials=checks.positive_int(checks.int_text(n_trials), "--n-trials"))
    if timeout is not None:
        study = dataclasses.replace(study, timeout=checks.duration(timeout, "--timeout"))
    if storage is not None:
        study = dataclasses.replace(study, storage=checks.text(storage, "--storage"))
    if seed is not None:
        kwargs = {**study.sampler.kwargs, "seed": checks.seed(checks.int_text(seed), "--seed")}
        study = dataclasses.replace(study, sampler=dataclasses.replace(study.sampler, kwargs=kwargs))
    if study_name is not None:
        name = checks.study_name(study_name, "--study-name")
        if tracking.experiment == study.name:  # the experiment was defaulted to the study name: follow it
            tracking = dataclasses.replace(tracking, experiment=name)
        study = dataclasses.replace(study, name=name)
    if devices is not None:
        resources = dataclasses.replace(resources, devices=checks.devices(devices, "--devices"))
    if trials_per_device is not None:
        per_device = checks.trials_per_device(checks.int_text(trials_per_device), "--trials-per-device")
        resources = dataclasses.replace(resources, trials_per_device=per_device)
    if tracking_uri is not None:
        tracking = dataclasses.replace(tracking, uri=checks.text(tracking_uri, "--tracking-uri"))
    return dataclasses.replace(spec, study=study, resources=resources, tracking=tracking)


def with_task_choices(spec: Spec, params: dict[str, Any]) -> Spec:
    """The spec a trial with `params` trains: a searched `model` or `image_size` (params.TASK_CHOICES) put in
    task, where everything that builds data and models reads it. The spec itself when neither is in params."""
    model, size = params.get("model"), params.get("image_size")
    task = spec.task
    if model is not None:
        task = dataclasses.replace(task, model=dataclasses.replace(task.model, name=model))
    if size is not None:
        task = dataclasses.replace(task, data=dataclasses.replace(task.data, image_size=size))
    return spec if task is spec.task else dataclasses.replace(spec, task=task)


def fixed_spec(spec: Spec, values: dict[str, Any]) -> Spec:
    """A copy that trains `values` (e.g. the best trial's params) merged into train (a chosen model or image
    size into task), with nothing searched."""
    spec = with_task_choices(spec, values)
    values = {k: v for k, v in values.items() if k not in TASK_CHOICES}
    train = dict(spec.train)
    for name, value in values.items():
        at = f"train.{name}"
        checks.hparam_name(name, at)
        train[name] = checks.hparam_value(name, value, at)
    check_plateau_gamma(train, {})
    check_finetuning(train, {}, spec.task.model.name)
    check_distillation(train, {}, spec.task.teacher)
    return dataclasses.replace(spec, train=train, search_space={})


# ---------------------------------------------------------------------------- sections


def _parse_study(raw: Any, source: str | None) -> StudySpec:
    path = "study"
    raw = checks.section(raw, path)
    checks.check_keys(raw, ("name", "metric", "direction", "objectives", "n_trials", "timeout", "sampler", "pruner",
                            "storage", "scheduler", "confirm"), path)
    scheduler = parse_scheduler(raw.get("scheduler"), "study.scheduler")
    confirm = parse_confirm(raw, scheduler is not None)
    if "name" in raw:
        name = checks.study_name(raw["name"], "study.name")
    elif source is None:
        raise SpecError("study.name", "required (there is no file to take the name from)")
    else:
        stem = Path(source).stem
        try:
            name = checks.study_name(stem, "study.name")
        except SpecError:
            raise SpecError("study.name", f"the file's stem {checks.shown(stem)} is not a valid study name: "
                                          "set study.name") from None
    if "objectives" in raw:
        objectives = _parse_objectives(raw, "study.objectives")
        trained_by = next(o for o in objectives if o.metric in METRICS)
        metric, direction = trained_by.metric, trained_by.direction
        default_pruner = PrunerSpec("none", {})
    else:
        objectives = ()
        metric = checks.one_of(raw.get("metric", "val_accuracy"), METRICS, "study.metric")
        direction = _direction(metric, raw.get("direction"), "study.direction")
        default_pruner = PrunerSpec("median", {"n_warmup_steps": 2})
    if scheduler is not None:
        check_population(raw, scheduler)
        default_pruner = PrunerSpec("none", {})
    pruner = _parse_pruner(raw.get("pruner"), "study.pruner", default_pruner)
    sampler = _parse_sampler(raw.get("sampler"), "study.sampler")
    if objectives and sampler.name in search_components.SINGLE_OBJECTIVE_SAMPLERS:
        multi = [n for n in search_components.SAMPLERS if n not in search_components.SINGLE_OBJECTIVE_SAMPLERS]
        raise SpecError("study.sampler.name", f"{sampler.name} optimises one objective; with study.objectives use "
                                              f"one of {', '.join(multi)}")
    if objectives and pruner.name != "none":
        raise SpecError("study.pruner", f"Optuna cannot prune multi-objective trials: use pruner: none (the default "
                                        f"with study.objectives), got {checks.shown(pruner.name)}")
    timeout = raw.get("timeout")
    return StudySpec(
        name=name,
        metric=metric,
        direction=direction,
        n_trials=checks.positive_int(raw.get("n_trials", scheduler.population if scheduler else 20), "study.n_trials"),
        timeout=None if timeout is None else checks.duration(timeout, "study.timeout"),
        sampler=sampler,
        pruner=pruner,
        storage=None if raw.get("storage") is None else checks.text(raw["storage"], "study.storage"),
        objectives=objectives,
        scheduler=scheduler,
        confirm=confirm,
    )


def parse_confirm(raw: dict[str, Any], population: bool) -> ConfirmSpec | None:
    """`study.confirm: {top: K, seeds: S}` (None when absent), refused where a configuration cannot be retrained
    and ranked by one mean."""
    if raw.get("confirm") is None:
        return None
    path = "study.confirm"
    section = checks.section(raw["confirm"], path)
    checks.check_keys(section, ("top", "seeds"), path)
    if "objectives" in raw:
        raise SpecError(path, CONFIRM_MULTI)
    if population:
        raise SpecError(path, CONFIRM_PBT)
    seeds = checks.positive_int(section.get("seeds", 3), f"{path}.seeds")
    if seeds < 2:
        raise SpecError(f"{path}.seeds", f"must be at least 2 (one seed has no spread), got {seeds}")
    return ConfirmSpec(top=checks.positive_int(section.get("top", 3), f"{path}.top"), seeds=seeds)


# Why a confirmation is refused, in `validate` and in `hpsearch confirm` alike.
CONFIRM_MULTI = ("a multi-objective study has a Pareto front, not one winner to confirm: pick a point with "
                 "`best --trial N` (confirmation ranks configurations by one metric's mean)")
CONFIRM_PBT = ("a population-based member's configuration is its schedule, not a starting point: retrain it with "
               "`best --export` and `hpsearch train best.yaml`, which replays the schedule")


def _direction(metric: str, raw: Any, path: str) -> Literal["maximize", "minimize"]:
    natural = natural_direction(metric)
    direction = checks.one_of(raw if raw is not None else natural, DIRECTIONS, path)
    if direction != natural:
        raise SpecError(path, f"must be {natural} for {metric}, got {checks.shown(direction)}")
    return direction


def _parse_objectives(raw: dict, path: str) -> tuple[Objective, ...]:
    """`objectives: [{metric, direction}, …]`: two or three distinct metrics, at least one measured per epoch
    (training keeps the best epoch by the first such), each in its natural direction."""
    given = [key for key in ("metric", "direction") if key in raw]
    if given:
        raise SpecError(f"study.{given[0]}", "give either study.metric/direction (one objective) or "
                                             "study.objectives (several), not both")
    items = raw["objectives"]
    if not isinstance(items, list) or not 2 <= len(items) <= 3:
        raise SpecError(path, f"must be a list of 2 or 3 objectives ({{metric: …, direction: …}}), got "
                              f"{checks.describe(items)}; one objective is study.metric")
    objectives: list[Objective] = []
    for i, item in enumerate(items):
        at = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"metric": item}
        item = checks.section(item, at)
        checks.check_keys(item, ("metric", "direction"), at)
        if "metric" not in item:
            raise SpecError(f"{at}.metric", f"required ({', '.join(OBJECTIVE_METRICS)})")
        metric = checks.one_of(item["metric"], OBJECTIVE_METRICS, f"{at}.metric")
        if metric in (o.metric for o in objectives):
            raise SpecError(f"{at}.metric", f"{metric} is already an objective")
        objectives.append(Objective(metric, _direction(metric, item.get("direction"), f"{at}.direction")))
    if not any(o.metric in METRICS for o in objectives):
        raise SpecError(path, f"needs at least one of {', '.join(METRICS)} (training keeps the best epoch by it)")
    return tuple(objectives)


def _named(raw: Any, path: str, what: str, table: dict) -> tuple[str, dict]:
    """Split `{name: x, **kwargs}` (or the bare string `x`) into a checked name and the keywords."""
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = checks.section(raw, path)
    if "name" not in raw:
        raise SpecError(f"{path}.name", f"required ({', '.join(table)})")
    name = raw["name"]
    if not isinstance(name, str) or name not in table:
        raise SpecError(f"{path}.name", checks.unknown(what, name, table))
    return name, {k: v for k, v in raw.items() if k != "name"}


def _parse_sampler(raw: Any, path: str) -> SamplerSpec:
    if raw is None:
        raw = {"name": "tpe"}
    name, kwargs = _named(raw, path, "sampler", search_components.SAMPLERS)
    search_components.check_kwargs("sampler", name, kwargs, path)
    kwargs["seed"] = checks.seed(kwargs.get("seed", 0), f"{path}.seed")
    return SamplerSpec(name, kwargs)


def _parse_pruner(raw: Any, path: str, default: PrunerSpec) -> PrunerSpec:
    if raw is None:
        return default
    name, kwargs = _named(raw, path, "pruner", search_components.PRUNERS)
    if name == "patient":
        kwargs["wrapped_pruner"] = _parse_pruner(
            kwargs.get("wrapped_pruner"), f"{path}.wrapped_pruner", PrunerSpec("none", {})
        )
    search_components.check_kwargs("pruner", name, kwargs, path)
    pruner = PrunerSpec(name, kwargs)
    _probe(lambda: samplers.build_pruner(pruner), path)
    return pruner


def _probe(build: Callable[[], object], path: str) -> None:
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
    raw = checks.section(raw, "task")
    checks.check_keys(raw, ("model", "data", "teacher"), "task")
    return TaskSpec(model=_parse_model(raw.get("model")), data=_parse_data(raw.get("data")),
                    teacher=_parse_teacher(raw.get("teacher")))


def _check_compression(study: StudySpec, train: dict, space: dict[str, ParamSpec]) -> None:
    """prune_amount and quantize act after training: only a multi-objective study's objectives measure them."""
    if study.multi:
        return
    for name in COMPRESSION_HPARAMS:
        at = f"search_space.{name}" if name in space else f"train.{name}"
        if name in space or train.get(name, HPARAM_DEFAULTS[name]) != HPARAM_DEFAULTS[name]:
            raise SpecError(at, "is applied after training and measured by a multi-objective study's objectives: "
                                "set study.objectives (e.g. val_accuracy and latency_ms), or compress one trial "
                                "with `hpsearch compress`")


def _choices_of(name: str, space: dict[str, ParamSpec], fixed: Any) -> list[Any]:
    """Every value of task setting `name` a trial can train with: its searched choices (and the task's own value
    when the search has a `when:` that can leave it unsearched), else the task's value."""
    if name not in space:
        return [fixed]
    searched = list(space[name].options)
    return searched + ([fixed] if space[name].when is not None and fixed not in searched else [])


def _check_task_choices(task: TaskSpec, space: dict[str, ParamSpec]) -> None:
    """A searched backbone or input size: every model name known, weights that fit every model, every size a
    valid task.data.image_size, and every model able to take every size (a forward pass on the meta device,
    where torch is installed)."""
    if "model" not in space and "image_size" not in space:
        return
    models = _choices_of("model", space, task.model.name)
    if "model" in space:
        for i, name in enumerate(space["model"].options):
            _model_name(name, f"search_space.model.choices[{i}]")
        if task.model.weights not in ("none", "DEFAULT"):
            raise SpecError("task.model.weights", "a weights name or file fits one architecture: with model searched, "
                                                  f"use DEFAULT or none, got {checks.shown(task.model.weights)}")
    if "image_size" in space:
        for i, size in enumerate(space["image_size"].options):
            try:
                dataclasses.replace(task.data, image_size=size)
            except DataConfigError as e:
                raise SpecError(f"search_space.image_size.choices[{i}]", e.problem) from None
    try:  # torch: only a spec that searches the task pays it
        from hpsearch.engine.models import input_problem
    except ImportError:  # no torch (a machine that validates, not trains): a misfit fails its trial
        return

    for size in _choices_of("image_size", space, task.data.image_size):
        pixels = size or task.data.pixels
        for name in models:
            problem = input_problem(name, pixels)
            if problem is not None:
                at = "search_space.model" if "model" in space else "search_space.image_size"
                raise SpecError(at, f"{name} cannot take {pixels}x{pixels} images ({problem})")


def _parse_model(raw: Any) -> ModelSpec:
    path = "task.model"
    raw = checks.section({"name": raw} if isinstance(raw, str) else raw, path)
    checks.check_keys(raw, ("name", "weights"), path)
    if "name" not in raw:
        raise SpecError(f"{path}.name", "required")
    name = _model_name(raw["name"], f"{path}.name")
    return ModelSpec(name=name, weights=_weights(name, raw.get("weights", "DEFAULT"), f"{path}.weights"))


def _model_name(name: Any, path: str) -> str:
    if not model_catalog.is_model(name):
        raise SpecError(path, checks.unknown("model", name, model_catalog.suggestions()))
    return name


def _parse_teacher(raw: Any) -> TeacherSpec | None:
    """`task.teacher`: its form here; what it holds (files, classes, input size) in teacher_spec.check_teacher."""
    path = "task.teacher"
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError(path, "must be a mapping ({export: studies/<study>/best} or {model: NAME, weights: DEFAULT}), "
                              f"got {checks.describe(raw)}")
    checks.check_keys(raw, ("export", "model", "weights"), path)
    if "export" in raw:
        for key in ("model", "weights"):
            if key in raw:
                raise SpecError(f"{path}.{key}", "an export names its own model and weights: give export, or model "
                                                 "and weights, not both")
        return TeacherSpec(export=checks.text(raw["export"], f"{path}.export"))
    if "model" not in raw:
        raise SpecError(path, "required: export (a folder `hpsearch best --export` wrote) or model (a torchvision "
                              "model, with weights)")
    name = _model_name(raw["model"], f"{path}.model")
    weights = _weights(name, raw.get("weights", "DEFAULT"), f"{path}.weights")
    if weights == "none":
        raise SpecError(f"{path}.weights", "a teacher needs trained weights: DEFAULT, a weights name or a state_dict "
                                           "file, got none")
    return TeacherSpec(model=name, weights=weights)


def _weights(model: str, value: Any, path: str) -> str:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return "none"
    if not isinstance(value, str):
        raise SpecError(path, f"must be none, DEFAULT, a weights name or a file path, got {checks.shown(value)}")
    if value.upper() == "DEFAULT":
        return "DEFAULT"
    if is_weights_path(value):
        if not os.path.isfile(value):  # relative to the working directory, like any CLI path
            raise SpecError(path, f"file not found: {value}")
        return value
    enum, members = model_catalog.weights(model)
    member = value.removeprefix(f"{enum}.")  # 'MobileNet_V2_Weights.IMAGENET1K_V2' works too
    if member not in members:
        valid = ", ".join(["none", *members])
        raise SpecError(path, f"{model} has no weights {checks.shown(value)} "
                              f"(valid: {valid}, or a path to a state_dict file)")
    return member


_DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig) if f.name != "name"}


def _parse_data(raw: Any) -> DataConfig:
    """`task.data`: types are checked here, values by DataConfig itself (the one set of rules)."""
    path = "task.data"
    raw = checks.section({"name": raw} if isinstance(raw, str) else raw, path)
    checks.check_keys(raw, ["name", *_DATA_DEFAULTS], path)
    if "name" not in raw:
        raise SpecError(f"{path}.name", "required")
    values = {**_DATA_DEFAULTS, **raw}
    image_size = values["image_size"]
    try:
        return DataConfig(
            name=values["name"],
            root=checks.text(values["root"], f"{path}.root"),
            val_fraction=checks.number(values["val_fraction"], f"{path}.val_fraction"),
            test_fraction=None if values["test_fraction"] is None
            else checks.number(values["test_fraction"], f"{path}.test_fraction"),
            image_size=None if image_size is None else checks.positive_int(image_size, f"{path}.image_size"),
            download=checks.boolean(values["download"], f"{path}.download"),
            augment=values["augment"],
            num_classes=checks.positive_int(values["num_classes"], f"{path}.num_classes"),
            samples=checks.positive_int(values["samples"], f"{path}.samples"),
            in_memory=values["in_memory"],
        )
    except DataConfigError as e:
        raise SpecError(f"{path}.{e.field}", e.problem) from None


def _parse_train(raw: Any) -> tuple[dict, dict]:
    raw = checks.section(raw, "train")
    train: dict[str, Any] = {}
    settings = dict(TRAIN_SETTINGS)
    for key, value in raw.items():
        at = f"train.{key}"
        if key in TRAIN_SETTINGS:
            # YAML 1.1 reads a bare `off` as false; take it as meant. Every setting is auto|off.
            settings[key] = checks.one_of("off" if value is False else value, SETTING_MODES, at)
        else:
            checks.hparam_name(key, at, also=tuple(TRAIN_SETTINGS))
            train[key] = checks.hparam_value(key, value, at)
    return train, settings


def _parse_resources(raw: Any) -> ResourcesSpec:
    path = "resources"
    raw = checks.section(raw, path)
    checks.check_keys(raw, ("devices", "trials_per_device"), path)
    return ResourcesSpec(
        devices=checks.devices(raw.get("devices", "auto"), f"{path}.devices"),
        trials_per_device=checks.trials_per_device(raw.get("trials_per_device", "auto"), f"{path}.trials_per_device"),
    )


def _parse_tracking(raw: Any, study_name: str) -> TrackingSpec:
    path = "tracking"
    raw = checks.section(raw, path)
    checks.check_keys(raw, ("uri", "experiment", "checkpoints"), path)
    d = TrackingSpec()
    return TrackingSpec(
        uri=checks.text(raw.get("uri", d.uri), f"{path}.uri"),
        experiment=checks.text(raw.get("experiment", study_name), f"{path}.experiment"),
        checkpoints=checks.one_of(raw.get("checkpoints", d.checkpoints), CHECKPOINT_POLICIES, f"{path}.checkpoints"),
    )
