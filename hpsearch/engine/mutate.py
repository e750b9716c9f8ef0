"""Changing a training trial's mutable hyperparameters between epochs (population-based training's explore step).

Only core.hparams.MUTABLE_HPARAMS change, and each takes effect from the next step without rebuilding anything:

- lr and backbone_lr_scale scale every optimizer group's rate and everything a schedule derives rates from
  (base_lrs, initial_lr, OneCycle's max and min), so the schedule goes on from where it stands, at the new level;
- weight_decay and momentum are the optimizer groups' own settings;
- dropout is the head's dropout that build_model put in; label_smoothing the loss's; distillation's α and T the
  trainer's hyperparameters, read at every step.

A captured CUDA graph baked the old values in (all but a tensor lr): it is dropped and captured again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from hpsearch.core.hparams import MUTABLE_HPARAMS, HParams
from hpsearch.engine.models import head_name
from hpsearch.engine.train import EpochStats, Trainer

# Group and scheduler keys that hold a rate a schedule works from, scaled with the learning rate.
_RATE_KEYS = ("lr", "initial_lr", "base_lr", "max_lr", "min_lr")


def change_hparams(trainer: Trainer, changes: dict[str, Any]) -> HParams:
    """Apply `changes` ({name: new value}, names among MUTABLE_HPARAMS) to `trainer`; returns its new HParams."""
    fixed = sorted(set(changes) - set(MUTABLE_HPARAMS))
    if fixed:
        raise ValueError(f"cannot change {', '.join(fixed)} while training (mutable: {', '.join(MUTABLE_HPARAMS)})")
    old, new = trainer.hp, dataclasses.replace(trainer.hp, **changes)
    groups = trainer.optimizer.param_groups
    if new.backbone_lr_scale != old.backbone_lr_scale and all(g.get("name") == "all" for g in groups):
        raise ValueError("backbone_lr_scale: the trial was built with one optimizer group (scale 1, layer_decay 1), "
                         "so its backbone has no rate of its own to change")
    # Each group's rate moves with lr; a backbone group's (lr × backbone_lr_scale) with the scale too.
    factors = [new.lr / old.lr * (1.0 if group.get("name") in ("head", "all", None)
                                  else new.backbone_lr_scale / old.backbone_lr_scale) for group in groups]
    for group, factor in zip(groups, factors, strict=True):
        _scale_rates(group, factor)
        group["weight_decay"] = new.weight_decay
        if "momentum" in group:
            group["momentum"] = new.momentum
    _scale_schedule(trainer, factors)
    if new.dropout != old.dropout:
        set_head_dropout(trainer.model, new.dropout or 0.0)
    trainer.criterion.label_smoothing = new.label_smoothing
    trainer.hp = new
    if any(name != "lr" for name, value in changes.items() if getattr(old, name) != value):
        forget_graph(trainer)
    return new


def _scale_rates(mapping: dict[str, Any], factor: float) -> None:
    if factor == 1.0:
        return
    for key in _RATE_KEYS:
        value = mapping.get(key)
        if value is None:
            continue
        if hasattr(value, "mul_"):  # a tensor lr, read by a captured step: changed in place
            value.mul_(factor)
        else:
            mapping[key] = value * factor


def _scale_schedule(trainer: Trainer, factors: list[float]) -> None:
    """The torch schedulers' own copies of each group's rates (base_lrs, the last rates), scaled per group."""
    schedulers = []
    per_step = trainer.schedule.per_step
    if per_step is not None:
        schedulers.append(per_step)
        schedulers.extend(getattr(per_step, "_schedulers", []))  # SequentialLR's warm-up and main schedule
    for scheduler in schedulers:
        for attribute in ("base_lrs", "_last_lr"):
            rates = getattr(scheduler, attribute, None)
            if rates is not None:
                setattr(scheduler, attribute, [r * f for r, f in zip(rates, factors, strict=True)])


def set_head_dropout(model: nn.Module, p: float) -> None:
    """The dropout before the classifier that build_model set or put in (never the backbone's own layers)."""
    names = getattr(model, "hpsearch_head_modules", None) or [head_name(model)]
    found = False
    for name in names:
        module = model.get_submodule(name)
        dropout = module if isinstance(module, nn.Dropout) else getattr(module, "dropout", None)
        if isinstance(dropout, nn.Dropout):
            dropout.p = p
            found = True
    if not found:
        raise ValueError("dropout: the model has no dropout before its head to change (build it with dropout set)")


def forget_graph(trainer: Trainer) -> None:
    """Drop a captured step: its next full batches warm up and capture again with the new values."""
    if trainer._graph is not None:
        import torch

        torch.cuda.synchronize(trainer.device)
    trainer._graph = trainer._static = None
    trainer._eager_steps = 0


def replay(trainer: Trainer, schedule: list[tuple[int, dict[str, Any]]],
           on_epoch: Callable[[EpochStats], None] | None = None) -> list[EpochStats]:
    """Train `trainer` from scratch through a population-based member's hyperparameter schedule: each
    (epoch, changes) applies `changes` before that (1-based) epoch trains, as PBT's explore did mid-run
    (`hpsearch train` of an exported PBT winner). Returns the history."""
    for epoch, changes in sorted(schedule, key=lambda entry: entry[0]):
        if epoch < 1 or epoch > trainer.hp.epochs:
            raise ValueError(f"schedule: epoch {epoch} is outside 1..{trainer.hp.epochs}")
        trainer.fit(on_epoch, until_epoch=epoch - 1)
        if trainer.stopped_early:
            break
        change_hparams(trainer, changes)
    return trainer.fit(on_epoch)
