"""The sampler and pruner a spec names, and the check of their keywords.

A spec names a sampler or pruner and passes that class's own keywords. The keywords are checked
against the installed Optuna's constructor signature (so the list never drifts from the
library), and simple annotations (`int`, `float | None`, ...) are type-checked, because several
constructors store a bad value silently and fail only later, mid-search.

Optuna is imported only when a constructor is needed (checking keywords), not at import:
the spec's types and tables here load without it.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.core import checks
from hpsearch.core.checks import SpecError

if TYPE_CHECKING:
    pass


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
# patient's wrapped_pruner is a nested pruner spec that spec.study_spec parses.
_DERIVED = {("sampler", "grid", "search_space"): "taken from search_space; remove it here"}
_NESTED = {("pruner", "patient", "wrapped_pruner")}
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
