"""Checks of single spec values, shared by the spec's sections and the CLI's overrides.

Each takes the value and the dotted path it sits at, and returns the value (converted where YAML or
the command line give it in another form) or raises a SpecError naming that path.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from typing import Any

from hpsearch.params import HPARAM_TYPES, HYPERPARAMETERS, HParams, check_hparam_value


class SpecError(Exception):
    """A refused spec field: `path` is its dotted location, `message` says what is wrong."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


NAME = re.compile(r"[A-Za-z0-9._-]+")
HPARAM_DEFAULTS = HParams().as_dict()
# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; a number is clearly meant.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# Long names people write for short ones: `lern_rate` is far from `lr` but close to `learning_rate`.
_ALIASES = {"learning_rate": "lr", "bs": "batch_size", "wd": "weight_decay"}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def describe(value: Any) -> str:
    """A value as an error message shows it: 'a mapping', 'a list', or its repr."""
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else repr(value)


def section(raw: Any, path: str) -> dict:
    """A mapping section; an empty one (`train:` with nothing under it) reads as {}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(path, f"must be a mapping, got {describe(raw)}")
    return raw


def unknown(what: str, value: Any, valid: Iterable[str]) -> str:
    """'unknown <what> <value> (did you mean ...?)', or the valid names when none is close."""
    valid = list(valid)
    candidates = valid + [alias for alias, name in _ALIASES.items() if name in valid]
    close = difflib.get_close_matches(str(value), candidates, n=1)
    hint = f"did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else f"valid: {', '.join(valid)}"
    return f"unknown {what} {value!r} ({hint})"


def check_keys(mapping: dict, allowed: Iterable[str], path: str) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            raise SpecError(f"{path}.{key}" if path else str(key), unknown("key", key, allowed))


def hparam_name(name: Any, path: str, also: tuple[str, ...] = ()) -> None:
    if name not in HYPERPARAMETERS:
        raise SpecError(path, unknown("hyperparameter", name, (*HYPERPARAMETERS, *also)))


def hparam_value(name: str, value: Any, path: str) -> Any:
    """A checked hyperparameter value, as its declared type (64.0 → 64 for batch_size)."""
    if value is None and HPARAM_DEFAULTS[name] is None:
        return None  # e.g. patience: null keeps early stopping off
    py_type = HPARAM_TYPES[name]
    if py_type in (int, float) and isinstance(value, str) and _EXPONENT.fullmatch(value):
        value = float(value)
    problem = check_hparam_value(name, value)
    if problem:
        raise SpecError(path, problem)
    return py_type(value) if py_type in (int, float) else value


def one_of(value: Any, options: Iterable[str], path: str) -> Any:
    options = tuple(options)
    if value not in options:
        raise SpecError(path, f"must be one of {', '.join(options)}, got {value!r}")
    return value


def integer(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {value!r}")
    return value


def positive_int(value: Any, path: str) -> int:
    value = integer(value, path)
    if value <= 0:
        raise SpecError(path, f"must be > 0, got {value!r}")
    return value


def int_text(value: Any) -> Any:
    """CLI options may arrive as text: '12' → 12; anything else is left for the check to refuse."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def number(value: Any, path: str) -> int | float:
    if isinstance(value, str) and _EXPONENT.fullmatch(value):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number, got {value!r}")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, got {value!r}")
    return value


def text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, f"must be a non-empty string, got {value!r}")
    return value


def study_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise SpecError(path, f"must be letters, digits, '.', '_' or '-', got {value!r}")
    return value


def seed(value: Any, path: str) -> int:
    value = integer(value, path)
    if not 0 <= value < 2**32:  # numpy's seed range
        raise SpecError(path, f"must be in [0, {2**32 - 1}], got {value!r}")
    return value


def parse_duration(value: Any) -> float:
    """Seconds in '8h', '30m', '90s', '1h30m', '2d', or a plain number of seconds; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        compact = value.replace(" ", "").lower()
        if _SECONDS.fullmatch(compact):
            return float(compact)
        match = _DURATION.fullmatch(compact)
        if compact and match:
            days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            return days * 86400 + hours * 3600 + minutes * 60 + seconds
    raise ValueError(f"must be a duration like 8h, 30m, 90s or 1h30m, got {value!r}")


def duration(value: Any, path: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise SpecError(path, str(e)) from None
    if seconds <= 0:
        raise SpecError(path, f"must be > 0, got {value!r}")
    return seconds


def devices(value: Any, path: str) -> str | tuple[int, ...]:
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


def trials_per_device(value: Any, path: str) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str):
        raise SpecError(path, f"must be auto or a whole number > 0, got {value!r}")
    return positive_int(value, path)
