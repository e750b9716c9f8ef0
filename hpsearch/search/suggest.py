"""One trial's searched values: `when:` conditions resolved in dependency order, each value suggested to Optuna."""

from __future__ import annotations

from typing import Any

import optuna

from hpsearch.search.space import ParamSpec

_ABSENT = object()


def _condition_met(when: dict[str, Any] | None, values: dict[str, Any]) -> bool | None:
    """True/False once every parameter it names is resolved (absent counts as not met); None while pending."""
    if not when:
        return True
    for name, wanted in when.items():
        if name not in values:
            return None
        allowed = wanted if isinstance(wanted, (list, tuple)) else [wanted]
        if values[name] is _ABSENT or values[name] not in allowed:
            return False
    return True


def suggest(trial: optuna.Trial, search_space: dict[str, ParamSpec], fixed: dict[str, Any]) -> dict[str, Any]:
    """Suggest every searched parameter whose `when:` holds, resolving conditions in dependency order."""
    # Fixed values of searched names are fallbacks only: conditions see the searched value.
    values: dict[str, Any] = {k: v for k, v in fixed.items() if k not in search_space}
    pending = list(search_space.values())
    while pending:
        progressed = False
        for p in list(pending):
            met = _condition_met(p.when, values)
            if met is None:
                continue
            pending.remove(p)
            progressed = True
            values[p.name] = _suggest_one(trial, p) if met else _ABSENT
        if not progressed:  # the spec rejects cycles; this guards the loop all the same
            raise ValueError(f"circular when: among {', '.join(p.name for p in pending)}")
    return {k: v for k, v in values.items() if k in search_space and v is not _ABSENT}


def _suggest_one(trial: optuna.Trial, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.name, list(p.options))
    low, high = p.bounds
    if p.type == "float":
        return trial.suggest_float(p.name, low, high, log=p.log, step=p.step)
    return trial.suggest_int(p.name, int(low), int(high), log=p.log, step=int(p.step or 1))
