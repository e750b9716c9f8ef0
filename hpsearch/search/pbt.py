"""Population-based training's two decisions, made when a member reaches an interval boundary: whom (if anyone)
it copies, and how it perturbs the hyperparameters it copied.

Asynchronous, as in Ray Tune's PBT: a member is ranked among the scores the population has already reported at
that boundary, so nobody waits for the slowest member. Pure functions of their inputs and a random generator:
the orchestrator seeds one per (study seed, member, boundary), so a decision replays the same.
"""

from __future__ import annotations

import math
import random
from typing import Any

from hpsearch.search.space import ParamSpec

RESAMPLE = "resample"


def quantile_size(reported: int, quantile: float) -> int:
    """How many members form the top (and the bottom) quantile of `reported` scores: at least one, at most half."""
    return min(reported // 2, max(1, math.ceil(reported * quantile)))


def donor(member: int, scores: dict[int, float], quantile: float, maximize: bool, rng: random.Random) -> int | None:
    """The member `member` copies at this boundary, or None: it copies only when it is in the bottom quantile
    of the scores reported here ({member: score}, its own included), from one drawn from the top quantile.
    A nan score ranks last."""
    if member not in scores or len(scores) < 2:
        return None

    def rank_key(m: int) -> tuple[bool, float, int]:  # best first; ties by member number, for a stable order
        value = scores[m]
        return (math.isnan(value), -value if maximize else value, m)

    ranked = sorted(scores, key=rank_key)
    k = quantile_size(len(ranked), quantile)
    if k == 0 or member not in ranked[-k:]:
        return None
    return rng.choice(ranked[:k])


def explore(params: dict[str, Any], perturb: dict[str, tuple[float, ...] | str], space: dict[str, ParamSpec],
            resample_probability: float, rng: random.Random) -> dict[str, Any]:
    """The copied hyperparameters, each perturbed: resampled from its search range (always for `resample`, else
    with `resample_probability`), or multiplied by one of its factors and kept inside its range."""
    out = dict(params)
    for name, how in perturb.items():
        param = space[name]
        if how == RESAMPLE or rng.random() < resample_probability:
            out[name] = sample(param, rng)
        else:
            assert not isinstance(how, str)
            value = params[name] * rng.choice(how)
            low, high = _bounds(param)  # factors are for float ranges (pbt_spec)
            out[name] = min(max(value, low), high)
    return out


def sample(param: ParamSpec, rng: random.Random) -> Any:
    """A fresh draw from a searched parameter's range: log-uniform where it is log, on its step where it has one."""
    if param.type == "categorical":
        return rng.choice(param.options)
    low, high = _bounds(param)
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if param.log else rng.uniform(low, high)
    if param.step:
        value = low + round((value - low) / param.step) * param.step
        value = min(max(value, low), high)
    return round(value) if param.type == "int" else value


def _bounds(param: ParamSpec) -> tuple[float, float]:
    if param.low is None or param.high is None:
        raise ValueError(f"{param.name}: a range needs low and high")
    return float(param.low), float(param.high)
