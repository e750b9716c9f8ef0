"""Name → constructor tables for Optuna samplers and pruners.

A spec names a sampler or pruner and passes that class's own keywords. The keywords are checked
against the installed Optuna's constructor signature (so the list never drifts from the
library), and simple annotations (`int`, `float | None`, ...) are type-checked, because several
constructors store a bad value silently and fail only later, mid-search.

Optuna is imported only when a constructor is needed (checking keywords, building), not at import:
the spec's types and tables here load without it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import warnings
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hpsearch.core import checks
from hpsearch.core.checks import SpecError
from hpsearch.spec.space import ParamSpec

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class SamplerSpec:
    """`study.sampler`: a name of SAMPLERS and that constructor's keywords."""

    name: str
    kwargs: dict  # the sampler's own keywords, seed included


@dataclass(frozen=True)
class PrunerSpec:
    """`study.pruner`: a name of PRUNERS and that constructor's keywords."""

    name: str
    kwargs: dict  # the pruner's own keywords; patient's wrapped_pruner is a nested PrunerSpec


# Spec name → the class's name in optuna.samplers / optuna.pruners (resolved by constructor()).
SAMPLERS: dict[str, str] = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "grid": "GridSampler",
    # Multi-objective evolutionary samplers (they take one objective too).
    "nsgaii": "NSGAIISampler",
    "nsgaiii": "NSGAIIISampler",
}
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)  # refused for study.objectives
PRUNERS: dict[str, str] = {
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "patient": "PatientPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
}

# Keywords hpsearch fills in itself: grid's values come from the spec's search_space, and
# patient's wrapped_pruner is a nested pruner spec that spec.py parses.
_DERIVED = {("sampler", "grid", "search_space"): "taken from search_space; remove it here"}
_NESTED = {("pruner", "patient", "wrapped_pruner")}
# Samplers whose backing package Optuna imports only when the first trial samples.
_NEEDS_PACKAGE = {"cmaes": "cmaes"}
# Annotations naming Python objects (callables, sampler instances, trials) that YAML cannot express.
_NOT_FROM_YAML = ("Callable", "BaseSampler", "FrozenTrial")
_SIMPLE_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "None": "null"}


def constructor(component: str, name: str) -> type:
    """The Optuna class a 'sampler' or 'pruner' `name` builds (the first call imports Optuna)."""
    import optuna

    if component == "sampler":
        return getattr(optuna.samplers, SAMPLERS[name])
    return getattr(optuna.pruners, PRUNERS[name])


def _annotation(param: inspect.Parameter) -> str:
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return ""
    return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))


def _type_problem(annotation: str, value: Any) -> str | None:
    """Why `value` does not fit a simple annotation like 'int | None', or None (also for complex ones)."""
    parts = [p.strip() for p in annotation.split("|")]
    if not all(p in _SIMPLE_TYPES for p in parts):
        return None  # e.g. dict[str, Any]: left to the constructor
    fits = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "None": value is None,
    }
    if any(fits[p] for p in parts):
        return None
    return f"must be {' or '.join(_SIMPLE_TYPES[p] for p in parts)}, got {checks.shown(value)}"


def keywords(component: str, name: str) -> dict[str, inspect.Parameter]:
    """The keywords a spec may set for this sampler/pruner (derived and Python-object ones excluded)."""
    params = inspect.signature(constructor(component, name)).parameters
    return {
        key: p
        for key, p in params.items()
        if (component, name, key) not in _DERIVED
        and ((component, name, key) in _NESTED or not any(t in _annotation(p) for t in _NOT_FROM_YAML))
    }


def check_kwargs(component: str, name: str, kwargs: dict[str, Any], path: str) -> None:
    """Refuse keywords the `component` ('sampler' or 'pruner') `name` does not take, values of the wrong
    type, and missing required ones; `path` is where the keywords sit in the file (e.g. 'study.sampler')."""
    allowed = keywords(component, name)
    for key, value in kwargs.items():
        at = f"{path}.{key}"
        if (component, name, key) in _DERIVED:
            raise SpecError(at, _DERIVED[(component, name, key)])
        if key not in allowed:
            all_params = inspect.signature(constructor(component, name)).parameters
            if key in all_params:
                raise SpecError(at, "takes a Python object; it cannot be set from a spec file")
            valid = ", ".join(allowed) or "none"
            close = difflib.get_close_matches(str(key)[:80], list(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the {name} {component} takes: {valid}"
            raise SpecError(at, f"unknown key {checks.shown(key)} ({hint})")
        if (component, name, key) not in _NESTED:
            problem = _type_problem(_annotation(allowed[key]), value)
            if problem:
                raise SpecError(at, problem)
            _check_numbers(value, at)
    for key, p in allowed.items():
        if p.default is inspect.Parameter.empty and key not in kwargs and (component, name, key) not in _NESTED:
            raise SpecError(f"{path}.{key}", f"required by the {name} {component}")
    if component == "pruner" and name == "threshold" and kwargs.get("lower") is None and kwargs.get("upper") is None:
        raise SpecError(path, "the threshold pruner needs lower, upper or both")
    if component == "sampler" and name in _NEEDS_PACKAGE and importlib.util.find_spec(_NEEDS_PACKAGE[name]) is None:
        package = _NEEDS_PACKAGE[name]
        raise SpecError(f"{path}.name", f"the {name} sampler needs the {package!r} package: pip install {package}")


def _check_numbers(value: Any, path: str) -> None:
    """Every number in a keyword's value (at any depth, e.g. cmaes's x0) finite and within int64: constructors
    store nan or 1e400 silently, or overflow converting it, and fail only mid-search."""
    todo = [(value, path)]
    while todo:  # a loop, not recursion: parse_spec also takes data that no YAML depth cap has seen
        item, at = todo.pop()
        if isinstance(item, dict):
            todo.extend((v, f"{at}.{k}") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            todo.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, int) and not isinstance(item, bool):
            checks.integer(item, at)
        elif isinstance(item, float):
            checks.finite(item, at)


def grid_search_space(search_space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    """Every value GridSampler should try per parameter; a float range needs a step to be finite."""
    grid: dict[str, list[Any]] = {}
    for name, p in search_space.items():
        if p.type == "categorical":
            grid[name] = list(p.options)
        elif p.type == "int":
            low, high = p.bounds
            grid[name] = list(range(int(low), int(high) + 1, int(p.step or 1)))
        elif p.step is not None:
            # Decimal steps keep 0.1 + 0.2 from landing just off Optuna's own grid.
            first, step = Decimal(str(p.low)), Decimal(str(p.step))
            count = int((Decimal(str(p.high)) - first) / step)
            grid[name] = [float(first + i * step) for i in range(count + 1)]
        else:
            raise SpecError(
                "study.sampler",
                f"the grid sampler needs a finite set of values, but search_space.{name} is a continuous "
                "float range: give it a step or make it categorical",
            )
    return grid


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial, hashed from the study seed and the trial number (stable across machines):
    the trial's sampler draws with it and its training starts from it. Hashed rather than added: with
    `seed + n`, study seed 1's trial 0 would replay seed 0's trial 1, and searches "with other seeds"
    would share most of their samples."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF  # numpy and torch both take it


def build_sampler(
    sampler_spec: SamplerSpec, search_space: dict[str, ParamSpec], trial_number: int | None = None
) -> optuna.samplers.BaseSampler:
    """The sampler a spec names. With `trial_number`, the spec's seed is replaced by that trial's seed
    (trial_seed), so that each trial draws its own reproducible values."""
    kwargs = dict(sampler_spec.kwargs)
    if kwargs.get("seed") is not None and trial_number is not None:
        kwargs["seed"] = trial_seed(kwargs["seed"], trial_number)
    if sampler_spec.name == "grid":
        kwargs["search_space"] = grid_search_space(search_space)
    if sampler_spec.name == "tpe":
        # Parallel workers: a RUNNING trial counts as a poor result, so workers spread out instead of
        # sampling next to each other (Optuna 5's default too; said here so that it stays so).
        kwargs.setdefault("constant_liar", True)
    import optuna

    with warnings.catch_warnings():  # built once per trial: NSGA-III's "experimental" would repeat every time
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return constructor("sampler", sampler_spec.name)(**kwargs)


# Samplers whose sequence is coordinated through the study's storage: one seed for the whole study.
_STUDY_SEEDED = ("qmc",)


def tpe_startup_trials(n_trials: int) -> int:
    """Random trials before TPE models the results, when the file does not say: a quarter of the budget,
    at least 5, at most Optuna's own 10. Optuna's fixed 10 spends half of a 20-trial budget at random;
    with 3 of 12 the median search did as well but single searches went badly wrong (docs/benchmarks.md,
    section 7)."""
    return max(5, min(10, n_trials // 4))


def with_defaults(sampler_spec: SamplerSpec, search_space: dict[str, ParamSpec], n_trials: int) -> SamplerSpec:
    """The sampler spec with hpsearch's defaults filled in where the file is silent (TPE only)."""
    if sampler_spec.name != "tpe":
        return sampler_spec
    kwargs = dict(sampler_spec.kwargs)
    kwargs.setdefault("n_startup_trials", tpe_startup_trials(n_trials))
    return SamplerSpec(sampler_spec.name, kwargs)


def study_sampler(sampler_spec: SamplerSpec, search_space: dict[str, ParamSpec],
                  n_trials: int) -> optuna.samplers.BaseSampler:
    """The sampler every process of a study uses: reproducible trial by trial, whoever runs the trial.

    Each trial samples with a seed derived from the spec's seed and its trial number (TrialSeededSampler), so a search
    with one worker reproduces exactly from the study seed, and with K workers trial n draws what it
    would draw with one (its startup trials are the study seed's, not K separate random streams).
    What TPE learned comes from the study's trials, RUNNING ones included (constant liar), not from
    the process that samples.
    """
    from hpsearch.search.trial_sampler import TrialSeededSampler  # runtime: subclasses Optuna's BaseSampler

    sampler_spec = with_defaults(sampler_spec, search_space, n_trials)
    if sampler_spec.name in _STUDY_SEEDED:
        return build_sampler(sampler_spec, search_space)
    return TrialSeededSampler(lambda number: build_sampler(sampler_spec, search_space, trial_number=number))


def build_pruner(pruner_spec: PrunerSpec) -> optuna.pruners.BasePruner:
    kwargs = dict(pruner_spec.kwargs)
    if pruner_spec.name == "patient":
        wrapped = kwargs["wrapped_pruner"]
        # PatientPruner(None) prunes on stagnation alone; wrapping a NopPruner would never prune.
        kwargs["wrapped_pruner"] = None if wrapped.name == "none" else build_pruner(wrapped)
    return constructor("pruner", pruner_spec.name)(**kwargs)
