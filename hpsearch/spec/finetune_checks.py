"""Checks of the fine-tuning hyperparameters against each other, the epochs and the model, before any compute.

A value that can reach a trial is checked whether it is fixed under `train:` or searched (every choice, both
ends of a range): `unfrozen_blocks` at most the model's stages, `unfreeze_epoch` below `epochs`, and
`freeze: partial` always with an `unfrozen_blocks`. A model's stages come from model_catalog (torch only for a
model it lacks).
"""

from __future__ import annotations

from typing import Any

from hpsearch.core.checks import HPARAM_DEFAULTS, SpecError, shown
from hpsearch.search.space import ParamSpec
from hpsearch.spec import model_catalog


def _fallback_used(name: str, space: dict[str, ParamSpec]) -> bool:
    """Whether some trial trains `name` with its train: (or default) value: not searched, or searched under a when:."""
    return name not in space or space[name].when is not None


def _possible(name: str, train: dict, space: dict[str, ParamSpec]) -> list[tuple[str, Any]]:
    """(field, value) for every value of `name` a trial can train with that the spec states: searched choices,
    a searched range's ends, and the train: value or default where it can be used."""
    found: list[tuple[str, Any]] = []
    if name in space:
        p, at = space[name], f"search_space.{name}"
        if p.type == "categorical":
            found += [(f"{at}.choices[{i}]", v) for i, v in enumerate(p.options)]
        else:
            found += [(f"{at}.low", p.low), (f"{at}.high", p.high)]
    if _fallback_used(name, space):
        found.append((f"train.{name}", train.get(name, HPARAM_DEFAULTS[name])))
    return found


def check_finetuning(train: dict, space: dict[str, ParamSpec], model: str) -> None:
    """Refuse fine-tuning values no trial could train with (one SpecError naming the field)."""
    _check_unfreeze_epoch(train, space)
    _check_partial_has_blocks(train, space)
    blocks = [(at, v) for at, v in _possible("unfrozen_blocks", train, space) if v is not None]
    if blocks:
        stages = model_catalog.stages(model)
        for at, value in blocks:
            if value > stages:
                raise SpecError(at, f"must be <= {stages} (the stages {model} has), got {shown(value)}")


def _check_unfreeze_epoch(train: dict, space: dict[str, ParamSpec]) -> None:
    # Every unfreeze_epoch must come before the fewest epochs a trial can have: frozen until epochs would
    # leave the backbone untrained (the epoch it joins is the last one at best).
    epochs = _possible("epochs", train, space)
    fewest_at, fewest = min(epochs, key=lambda pair: pair[1])
    where = "" if fewest_at == "train.epochs" else f" at the fewest, {fewest_at}"
    for at, value in _possible("unfreeze_epoch", train, space):
        if value is not None and value >= fewest:
            raise SpecError(at, f"must be < epochs ({fewest}{where}), got {shown(value)}")


def _check_partial_has_blocks(train: dict, space: dict[str, ParamSpec]) -> None:
    if not any(v == "partial" for _, v in _possible("freeze", train, space)) or "unfrozen_blocks" in train:
        return
    searched = space.get("unfrozen_blocks")
    if searched is not None and searched.when is not None:
        # Searched exactly when freeze is partial (`when: {freeze: partial}`): the usual conditional pattern,
        # sound unless freeze itself can be absent and fall back to partial.
        only_on = searched.when.get("freeze", ()) if set(searched.when) == {"freeze"} else ()
        freeze_falls_back = _fallback_used("freeze", space) and train.get("freeze") == "partial"
        if "partial" in only_on and not ("freeze" in space and freeze_falls_back):
            return
    elif searched is not None:
        return
    raise SpecError("train.unfrozen_blocks", "required when freeze is partial (how many of the last stages train): "
                                             "set it under train or search it")
