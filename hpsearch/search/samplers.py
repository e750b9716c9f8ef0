"""Building the study's sampler and pruner from the spec's SamplerSpec and PrunerSpec (with hpsearch's defaults:
TPE's start-up trials scaled to the budget, a grid taken from the search space).
"""

from __future__ import annotations

import warnings
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hpsearch.core.checks import SpecError
from hpsearch.search.space import ParamSpec

if TYPE_CHECKING:
    import optuna
from hpsearch.core.seeding import trial_seed
from hpsearch.search.components import PrunerSpec, SamplerSpec, constructor


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
