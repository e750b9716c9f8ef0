"""The `search_space:` section: what each trial searches, with `when:` conditions, checked against `train:`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hpsearch.core import checks
from hpsearch.core.checks import HPARAM_DEFAULTS, SpecError, shown
from hpsearch.core.hparams import HPARAM_TYPES, TASK_CHOICES, TRAIN_SETTINGS, check_hparam_value

PARAM_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter: a float or int range, or a set of choices."""

    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None
    # {parameter: allowed values}; the parameter exists only when every named one takes an allowed value.
    when: dict[str, tuple] | None = None

    @property
    def options(self) -> tuple:
        """The choices of a categorical parameter."""
        assert self.choices is not None, f"{self.name} is not categorical"
        return self.choices

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a float or int range."""
        assert self.low is not None, f"{self.name} is categorical"
        assert self.high is not None, f"{self.name} is categorical"
        return self.low, self.high

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            out: dict[str, Any] = {"type": self.type, "choices": list(self.options)}
        else:
            out = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {k: v[0] if len(v) == 1 else list(v) for k, v in self.when.items()}
        return out


def parse_search_space(raw: Any, train: dict) -> dict[str, ParamSpec]:
    """The searched parameters in file order; `train` holds the fixed values conditions may name."""
    raw = checks.section(raw, "search_space")
    space: dict[str, ParamSpec] = {}
    for name, entry in raw.items():
        at = f"search_space.{name}"
        if name in TRAIN_SETTINGS:
            raise SpecError(at, "is a setting, not a hyperparameter: set it under train")
        if name in TASK_CHOICES:
            space[name] = _parse_task_choice(name, entry, at)
            continue
        checks.hparam_name(name, at, also=tuple(TASK_CHOICES))
        space[name] = _parse_param(name, entry, at)
    for p in space.values():
        for cond, values in (p.when or {}).items():
            _check_condition(p.name, cond, values, space, train)
    _check_no_cycles(space)
    return space


def _parse_param(name: str, entry: Any, at: str) -> ParamSpec:
    if not isinstance(entry, dict):
        raise SpecError(at, f"must be a mapping with a type (to fix a value, put it under train), got {shown(entry)}")
    if "type" not in entry:
        raise SpecError(f"{at}.type", f"required ({', '.join(PARAM_TYPES)})")
    param_type = checks.one_of(entry["type"], PARAM_TYPES, f"{at}.type")
    if param_type == "categorical":
        allowed: tuple[str, ...] = ("type", "choices", "when")
    else:
        allowed = ("type", "low", "high", "log", "step", "when")
    checks.check_keys(entry, allowed, at)
    when = _parse_when(entry["when"], f"{at}.when") if "when" in entry else None
    if param_type == "categorical":
        return ParamSpec(name, param_type, choices=_choices(name, entry.get("choices"), f"{at}.choices"), when=when)
    _check_type_fits(name, param_type, at)
    low, high, log = _range(name, param_type, entry, at)
    step = _step(param_type, entry, low, high, log, at)
    if param_type == "float":
        low, high, step = float(low), float(high), None if step is None else float(step)
    return ParamSpec(name, param_type, low=low, high=high, log=log, step=step, when=when)


def _check_type_fits(name: str, param_type: str, at: str) -> None:
    """A range's type must fit what the hyperparameter takes: no float range for a whole number, and so on."""
    hp_type = HPARAM_TYPES[name]
    if hp_type is str or hp_type is bool:
        raise SpecError(f"{at}.type", f"{name} takes one of a fixed set of values: use categorical, got {param_type!r}")
    if hp_type is int and param_type == "float":
        raise SpecError(f"{at}.type", f"{name} takes whole numbers: use int or categorical, got 'float'")
    if hp_type is float and param_type == "int":
        raise SpecError(f"{at}.type", f"{name} takes real numbers: use float or categorical, got 'int'")


def _range(name: str, param_type: str, entry: dict, at: str) -> tuple[Any, Any, bool]:
    """low, high and log of an int or float range, each checked against the others and the hyperparameter."""
    read = checks.integer if param_type == "int" else checks.number
    for bound in ("low", "high"):
        if bound not in entry:
            raise SpecError(f"{at}.{bound}", "required")
    low, high = read(entry["low"], f"{at}.low"), read(entry["high"], f"{at}.high")
    log = checks.boolean(entry.get("log", False), f"{at}.log")
    if log and param_type == "float" and low <= 0:
        raise SpecError(f"{at}.low", f"must be > 0 when log is true, got {shown(low)}")
    if log and param_type == "int" and low < 1:
        raise SpecError(f"{at}.low", f"must be >= 1 when log is true, got {shown(low)}")
    # low == high is refused although Optuna accepts it (as a fixed value): a fixed value belongs under
    # train, and a one-point range is more often a typo than a choice. Floats compare as Optuna will see them.
    if float(low) == float(high):
        raise SpecError(at, f"low equals high (to fix a value, put it under train), got low={shown(low)}, "
                            f"high={shown(high)}")
    if low > high:
        raise SpecError(at, f"low must be < high, got low={shown(low)}, high={shown(high)}")
    for bound, value in (("low", low), ("high", high)):
        problem = check_hparam_value(name, value, show=shown)
        if problem:
            raise SpecError(f"{at}.{bound}", problem)
    return low, high, log


def _step(param_type: str, entry: dict, low: Any, high: Any, log: bool, at: str) -> Any:
    """A range's step (None: continuous), which must divide high - low and cannot go with log."""
    step = entry.get("step")
    if step is None:
        return None
    step = (checks.integer if param_type == "int" else checks.number)(step, f"{at}.step")
    if step <= 0:
        raise SpecError(f"{at}.step", f"must be > 0, got {shown(step)}")
    if log:
        raise SpecError(f"{at}.step", "cannot be combined with log: true")
    # Optuna would silently move `high` down to the grid; say so instead.
    if (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)) != 0:
        raise SpecError(f"{at}.step", f"high - low must be a multiple of step, got low={shown(low)}, "
                                      f"high={shown(high)}, step={shown(step)}")
    return step


def _parse_task_choice(name: str, entry: Any, at: str) -> ParamSpec:
    """`model` or `image_size` searched: a categorical list of model names or of sizes (what each name or size
    can be, and whether each model takes each size, is checked with the task in spec.study_spec)."""
    if not isinstance(entry, dict):
        raise SpecError(at, f"must be a mapping with type: categorical and choices (to fix it, set task."
                            f"{'model.name' if name == 'model' else 'data.image_size'}), got {shown(entry)}")
    if entry.get("type") != "categorical":
        raise SpecError(f"{at}.type", f"{name} is searched among listed choices: use categorical, got "
                                      f"{shown(entry.get('type'))}")
    checks.check_keys(entry, ("type", "choices", "when"), at)
    raw = entry.get("choices")
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{at}.choices", f"must be a non-empty list, got {shown(raw)}")
    wanted = TASK_CHOICES[name]
    choices: list[Any] = []
    for i, value in enumerate(raw):
        if type(value) is not wanted:
            what = "a torchvision model name" if wanted is str else "a whole number of pixels"
            raise SpecError(f"{at}.choices[{i}]", f"must be {what}, got {shown(value)}")
        if value in choices:
            raise SpecError(f"{at}.choices[{i}]", f"{shown(value)} is already choices[{choices.index(value)}]")
        choices.append(value)
    when = _parse_when(entry["when"], f"{at}.when") if "when" in entry else None
    return ParamSpec(name, "categorical", choices=tuple(choices), when=when)


def _choices(name: str, raw: Any, path: str) -> tuple:
    if raw is None:
        raise SpecError(path, "required")
    if not isinstance(raw, list) or not raw:
        raise SpecError(path, f"must be a non-empty list, got {shown(raw)}")
    choices: list[Any] = []
    for i, value in enumerate(raw):
        value = checks.hparam_value(name, value, f"{path}[{i}]")
        if value in choices:
            raise SpecError(f"{path}[{i}]", f"{shown(value)} is already choices[{choices.index(value)}]")
        choices.append(value)
    return tuple(choices)


def _parse_when(raw: Any, path: str) -> dict[str, tuple]:
    if not isinstance(raw, dict) or not raw:
        raise SpecError(path, f"must be a mapping of parameter: value or [values], got {shown(raw)}")
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
                if value not in target.options:
                    valid = ", ".join(map(str, target.options))
                    raise SpecError(at, f"{cond} never takes {shown(value)} (its choices: {valid})")
            elif target.type == "int":
                low, high = target.bounds
                on_grid = isinstance(value, int) and not isinstance(value, bool) and (
                    low <= value <= high and (value - low) % (target.step or 1) == 0
                )
                if not on_grid:
                    ranges = f"{target.low}..{target.high}"
                    raise SpecError(at, f"{cond} never takes {shown(value)} (it ranges over {ranges})")
            else:
                raise SpecError(at, f"{cond} is a float range; a condition needs a categorical or int parameter")
    elif cond in train:
        values = tuple(checks.hparam_value(cond, v, at) for v in values)
        if train[cond] not in values:
            raise SpecError(at, f"never true: train.{cond} is {shown(train[cond])}")
    else:
        known = [*space, *train]
        close = difflib.get_close_matches(str(cond)[:80], known, n=1) if isinstance(cond, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(at, f"{shown(cond)} is not a parameter in search_space or train{hint}")


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


def check_plateau_gamma(train: dict, space: dict[str, ParamSpec]) -> None:
    """plateau cuts lr by the factor gamma, which ReduceLROnPlateau needs < 1: refuse a gamma >= 1 that
    a trial could pair with plateau, rather than fail that trial when it builds its schedule."""
    scheduler, gamma = space.get("scheduler"), space.get("gamma")
    fixed = train.get("scheduler", HPARAM_DEFAULTS["scheduler"])  # also the fallback of a conditional one
    possible = {fixed} if scheduler is None else {*scheduler.options, *([fixed] if scheduler.when else [])}
    if "plateau" not in possible:
        return
    problem = "must be < 1 when scheduler is plateau (the factor that cuts lr), got {!r}"
    # gamma searched only for some schedulers: with plateau, it is searched when plateau is one of them.
    only_for = gamma.when["scheduler"] if gamma and gamma.when and set(gamma.when) == {"scheduler"} else None
    if gamma is not None and (only_for is None or "plateau" in only_for):
        if gamma.type == "categorical":
            for i, value in enumerate(gamma.options):
                if value >= 1:
                    raise SpecError(f"search_space.gamma.choices[{i}]", problem.format(value))
        elif gamma.bounds[1] >= 1:
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
    value = train.get("gamma", HPARAM_DEFAULTS["gamma"])
    if fallback_meets_plateau and value >= 1:
        raise SpecError("train.gamma", problem.format(value))
