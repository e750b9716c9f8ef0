"""Checks of single spec values, shared by the spec's sections and the CLI's overrides.

Each takes the value and the dotted path it sits at, and returns the value (converted where YAML or
the command line give it in another form) or raises a SpecError naming that path.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Iterable
from typing import Any

from hpsearch.core.hparams import HPARAM_TYPES, HYPERPARAMETERS, HParams, check_hparam_value


class SpecError(Exception):
    """A refused spec field: `path` is its dotted location, `message` says what is wrong.

    Both are clipped: a key or a library's message may hold anything the file holds, and the CLI prints one
    short line whatever that is."""

    def __init__(self, path: str, message: str):
        path, message = clipped(str(path), _MAX_PATH), clipped(str(message), _MAX_MESSAGE)
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
_MAX_PATH, _MAX_MESSAGE, _MAX_SHOWN = 120, 300, 80
# Integers go to Optuna, numpy and the RDB storages as int64: beyond it they overflow there, not here.
INT_LIMIT = 2**63
# A capped repr: an alias-free file can still hold a megabyte string or a 50-deep list, and a message
# quotes only a recognisable start of it. maxlevel also keeps repr from recursing into deep nesting.
_REPR = reprlib.Repr()  # its limits are attributes (keywords only from Python 3.12)
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 4, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = _MAX_SHOWN, _MAX_SHOWN, 40


def clipped(text: str, limit: int = _MAX_SHOWN) -> str:
    """`text` cut to `limit` characters, its middle elided: for texts hpsearch does not control."""
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return f"{text[:keep]}...{text[len(text) - keep:]}"


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, capped in length and depth (every message uses this)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        # repr itself refuses ints past 4300 digits; the size is what matters here.
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        return clipped(_REPR.repr(value))
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def describe(value: Any) -> str:
    """A value as an error message shows it: 'a mapping', 'a list', or its capped repr."""
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else shown(value)


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
    guess = str(value) if isinstance(value, (str, int, float)) else ""
    close = difflib.get_close_matches(guess[:_MAX_SHOWN], candidates, n=1)
    hint = f"did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else f"valid: {', '.join(valid)}"
    return f"unknown {what} {shown(value)} ({hint})"


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
    written = value
    if py_type in (int, float) and isinstance(value, str) and _EXPONENT.fullmatch(value):
        value = float(value)
    if py_type in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if py_type is int and isinstance(value, int) and abs(value) >= INT_LIMIT:
            raise SpecError(path, f"must be < {INT_LIMIT}, got {shown(value)}")
        finite(value, path, written)
    problem = check_hparam_value(name, value, show=shown)
    if problem:
        raise SpecError(path, problem)
    return py_type(value) if py_type in (int, float) else value


def one_of(value: Any, options: Iterable[str], path: str) -> Any:
    options = tuple(options)
    if value not in options:
        raise SpecError(path, f"must be one of {', '.join(options)}, got {shown(value)}")
    return value


def integer(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {shown(value)}")
    if abs(value) >= INT_LIMIT:
        raise SpecError(path, f"must be < {INT_LIMIT}, got {shown(value)}")
    return value


def positive_int(value: Any, path: str) -> int:
    value = integer(value, path)
    if value <= 0:
        raise SpecError(path, f"must be > 0, got {shown(value)}")
    return value


def int_text(value: Any) -> Any:
    """CLI options may arrive as text: '12' → 12; anything else is left for the check to refuse."""
    digits = value.strip() if isinstance(value, str) else ""
    # isascii: str.isdigit() is also true of '²', which int() refuses; the digit cap keeps int() in its limit.
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 30 else value


def is_finite(value: int | float) -> bool:
    """False for nan, ±inf and an integer too large to become a float (Optuna and numpy compute in floats)."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past ~1.8e308
        return False


def finite(value: int | float, path: str, written: Any = None) -> None:
    """Refuse a non-finite number; `written` is the text it was parsed from, if any ('1e999'), to quote."""
    if not is_finite(value):
        raise SpecError(path, f"must be a finite number, got {shown(value if written is None else written)}")


def number(value: Any, path: str) -> int | float:
    written = value
    if isinstance(value, str) and _EXPONENT.fullmatch(value):
        value = float(value)  # '1e999' reads as inf: refused below like .inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number, got {shown(value)}")
    finite(value, path, written)
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, got {shown(value)}")
    return value


def text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, f"must be a non-empty string, got {shown(value)}")
    return value


MAX_STUDY_NAME = 128  # it names a folder (studies/<name>/) and an MLflow experiment


def study_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise SpecError(path, f"must be letters, digits, '.', '_' or '-', got {shown(value)}")
    if not value.strip("."):  # '.' and '..' would make studies/<name>/best a path outside studies/
        raise SpecError(path, f"must not be only dots, got {shown(value)}")
    if len(value) > MAX_STUDY_NAME:
        raise SpecError(path, f"must be at most {MAX_STUDY_NAME} characters, got {shown(value)}")
    return value


def seed(value: Any, path: str) -> int:
    value = integer(value, path)
    if not 0 <= value < 2**32:  # numpy's seed range
        raise SpecError(path, f"must be in [0, {2**32 - 1}], got {shown(value)}")
    return value


def parse_duration(value: Any) -> float:
    """Seconds in '8h', '30m', '90s', '1h30m', '2d', or a plain number of seconds; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and is_finite(value):
        return float(value)
    if isinstance(value, str):
        compact = value.replace(" ", "").lower()
        if _SECONDS.fullmatch(compact):
            return float(compact)
        match = _DURATION.fullmatch(compact)
        if compact and match:
            days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            return days * 86400 + hours * 3600 + minutes * 60 + seconds
    raise ValueError(f"must be a duration like 8h, 30m, 90s or 1h30m, got {shown(value)}")


MAX_SECONDS = 100 * 365 * 86400


def duration(value: Any, path: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise SpecError(path, str(e)) from None
    if seconds <= 0:
        raise SpecError(path, f"must be > 0, got {shown(value)}")
    if seconds > MAX_SECONDS:  # '9999…' or '1e9d' reads as a float far past any deadline arithmetic (or inf)
        raise SpecError(path, f"must be at most 100 years, got {shown(value)}")
    return seconds


def devices(value: Any, path: str) -> str | tuple[int, ...]:
    if value in ("auto", "cpu"):
        return value
    indices: Any = value
    if isinstance(value, int) and not isinstance(value, bool):
        indices = [value]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        indices = [int(p) if p.isascii() and p.isdigit() and len(p) <= 6 else p for p in parts]
    if (
        not isinstance(indices, (list, tuple))
        or not indices
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < INT_LIMIT for i in indices)
    ):
        raise SpecError(path, f"must be auto, cpu, or GPU indices like 0,1 or [0, 1], got {shown(value)}")
    if len(set(indices)) != len(indices):
        raise SpecError(path, f"lists a GPU twice, got {shown(value)}")
    return tuple(indices)


MAX_TRIALS_PER_DEVICE = 64  # each is a worker process with its own copy of the data and the model


def trials_per_device(value: Any, path: str) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str):
        raise SpecError(path, f"must be auto or a whole number > 0, got {shown(value)}")
    count = positive_int(value, path)
    if count > MAX_TRIALS_PER_DEVICE:
        raise SpecError(path, f"must be at most {MAX_TRIALS_PER_DEVICE}, got {shown(count)}")
    return count
