"""`study.scheduler: {name: pbt, ...}`: population-based training, as the space file states it, and the
combinations that cannot work refused in one line each.

A population of `population` members (the study's trials) trains side by side; every `interval` epochs a
member in the bottom `quantile` of the scores reported at that epoch copies the weights and optimizer state of
one in the top `quantile`, then perturbs its mutable hyperparameters (core.hparams.MUTABLE_HPARAMS): a float
by one of its `perturb` factors, or, with probability `resample_probability` (always for `resample`), by a
fresh draw from its search range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hpsearch.core import checks
from hpsearch.core.checks import SpecError
from hpsearch.core.hparams import MUTABLE_HPARAMS, HParams
from hpsearch.search.pbt import RESAMPLE
from hpsearch.search.space import ParamSpec

SCHEDULERS = ("pbt",)
DEFAULT_FACTORS = (0.8, 1.25)  # Ray Tune's PBT perturbs a float by these


@dataclass(frozen=True)
class PbtSpec:
    population: int
    interval: int  # epochs between exploit/explore steps
    quantile: float = 0.25  # the bottom fraction copies from the top fraction
    # searched parameter → factors to multiply it by, or "resample" (a fresh draw from its range)
    perturb: dict[str, tuple[float, ...] | str] = field(default_factory=dict)
    resample_probability: float = 0.25
    checkpoint_budget_mb: int = 4096  # paused members' checkpoints on local disk (orchestration/paused_members.py)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "pbt", "population": self.population, "interval": self.interval, "quantile": self.quantile,
                "perturb": {k: v if isinstance(v, str) else list(v) for k, v in self.perturb.items()},
                "resample_probability": self.resample_probability, "checkpoint_budget_mb": self.checkpoint_budget_mb}


def parse_scheduler(raw: Any, path: str) -> PbtSpec | None:
    """The `study.scheduler` mapping (None when absent); what it says alone, before the rest of the spec."""
    if raw is None:
        return None
    raw = checks.section(raw, path)
    checks.check_keys(raw, ("name", "population", "interval", "quantile", "perturb", "resample_probability",
                            "checkpoint_budget_mb"), path)
    if "name" not in raw:
        raise SpecError(f"{path}.name", f"required: one of {', '.join(SCHEDULERS)}")
    checks.one_of(raw["name"], SCHEDULERS, f"{path}.name")
    for key in ("population", "interval"):
        if key not in raw:
            raise SpecError(f"{path}.{key}", "required")
    population = checks.positive_int(raw["population"], f"{path}.population")
    if population < 2:
        raise SpecError(f"{path}.population", f"must be at least 2 (one member has no one to copy), got {population}")
    quantile = checks.number(raw.get("quantile", 0.25), f"{path}.quantile")
    if not 0 < quantile <= 0.5:
        raise SpecError(f"{path}.quantile", f"must be in (0, 0.5] (the bottom and top fractions), got {quantile}")
    probability = checks.number(raw.get("resample_probability", 0.25), f"{path}.resample_probability")
    if not 0 <= probability <= 1:
        raise SpecError(f"{path}.resample_probability", f"must be in [0, 1], got {probability}")
    return PbtSpec(
        population=population,
        interval=checks.positive_int(raw["interval"], f"{path}.interval"),
        quantile=float(quantile),
        perturb=_parse_perturb(raw.get("perturb", {}), f"{path}.perturb"),
        resample_probability=float(probability),
        checkpoint_budget_mb=checks.positive_int(raw.get("checkpoint_budget_mb", 4096), f"{path}.checkpoint_budget_mb"),
    )


def check_population(raw: dict, scheduler: PbtSpec) -> None:
    """A population-based study's trials are its members, it optimises one objective, and it prunes nothing
    (its bottom members copy the top ones instead)."""
    if "objectives" in raw:
        raise SpecError("study.objectives", "population-based training (study.scheduler) ranks members by one "
                                            "metric: use study.metric")
    pruner = raw.get("pruner")
    named = pruner.get("name") if isinstance(pruner, dict) else pruner
    if pruner is not None and named != "none":
        raise SpecError("study.pruner", "population-based training replaces pruning (the bottom of the population "
                                        f"copies the top): use pruner: none, got {checks.shown(named)}")
    if "n_trials" in raw and raw["n_trials"] != scheduler.population:
        raise SpecError("study.n_trials", f"a population-based study's trials are its {scheduler.population} "
                                          f"members (study.scheduler.population): leave n_trials out, got "
                                          f"{checks.shown(raw['n_trials'])}")


def _parse_perturb(raw: Any, path: str) -> dict[str, tuple[float, ...] | str]:
    raw = checks.section(raw, path)
    perturb: dict[str, tuple[float, ...] | str] = {}
    for name, how in raw.items():
        at = f"{path}.{name}"
        if how == RESAMPLE:
            perturb[name] = RESAMPLE
            continue
        if not isinstance(how, list) or not how:
            raise SpecError(at, f"must be a list of factors such as [0.8, 1.25], or {RESAMPLE}, "
                                f"got {checks.shown(how)}")
        factors = tuple(float(checks.number(f, f"{at}[{i}]")) for i, f in enumerate(how))
        bad = next((f for f in factors if f <= 0), None)
        if bad is not None:
            raise SpecError(at, f"factors must be > 0, got {bad}")
        perturb[name] = factors
    return perturb


def check_pbt(pbt: PbtSpec, train: dict[str, Any], search_space: dict[str, ParamSpec], path: str) -> PbtSpec:
    """What PBT needs of the rest of the spec; returns it with every searched float given its perturbation."""
    for name in search_space:
        if name not in MUTABLE_HPARAMS:
            raise SpecError(f"search_space.{name}", f"cannot change while a population trains; with {path} fix it "
                                                    f"under train: (PBT mutates {', '.join(MUTABLE_HPARAMS)})")
    if not search_space:
        raise SpecError("search_space", f"{path} needs at least one searched hyperparameter to mutate")
    perturb = dict(pbt.perturb)
    for name, how in perturb.items():
        if name not in search_space:
            raise SpecError(f"{path}.perturb.{name}", "not searched: name a parameter of search_space")
        if how != RESAMPLE and search_space[name].type != "float":
            raise SpecError(f"{path}.perturb.{name}", f"factors need a float range; {name} is "
                                                      f"{search_space[name].type}: use {RESAMPLE}")
    for name, param in search_space.items():  # unnamed: floats by the default factors, others resampled
        perturb.setdefault(name, DEFAULT_FACTORS if param.type == "float" else RESAMPLE)
    if train.get("patience") is not None:
        raise SpecError("train.patience", "a population member trains all its epochs, so that the population's "
                                          "budget is exact (a poor member copies a good one instead of stopping): "
                                          "remove patience")
    epochs = train.get("epochs", HParams().epochs)
    if pbt.interval >= epochs:
        raise SpecError(f"{path}.interval", f"must be below train.epochs ({epochs}), or no member ever copies "
                                            f"another, got {pbt.interval}")
    return dataclasses.replace(pbt, perturb=perturb)
