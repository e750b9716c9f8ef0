"""Optimizers and learning-rate schedules by name (HParams.optimizer, HParams.scheduler), and the optimizer state
that gradual unfreezing must complete.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from hpsearch.core.hparams import HParams

WARMUP_START_FACTOR = 0.01  # linear warm-up starts at 1% of lr, as torchvision's reference recipe
PLATEAU_PATIENCE = 2  # stalled epochs plateau tolerates; it cuts lr after the next one (trials are short)


# --------------------------------------------------------------------------- optimizer and schedule


def build_optimizer(params: Iterable[Any], hp: HParams, lr_tensor: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by hp.optimizer, over parameters or parameter groups (finetune.param_groups).

    lr_tensor=True prepares it for CUDA-graph capture: lr becomes a float32 tensor on the params'
    device, so the scheduler's in-place updates reach every replay, and the step is a capturable one
    (capturable=True for Adam/AdamW/RMSprop; fused SGD, whose kernel reads lr from device memory,
    where the foreach SGD would turn a tensor lr into a host number).
    """
    given = list(params)
    groups: list[dict[str, Any]] = given if given and isinstance(given[0], dict) else [{"params": given}]
    device = groups[0]["params"][0].device

    def rate(base: float) -> float | torch.Tensor:
        return torch.tensor(base, dtype=torch.float32, device=device) if lr_tensor else base

    # Each group its own lr (for capture, a tensor of its own: the scheduler updates each in place);
    # base_lr keeps it exact for the schedules that need it as a number.
    groups = [{**g, "lr": rate(g.get("lr", hp.lr)), "base_lr": g.get("lr", hp.lr)} for g in groups]
    lr = rate(hp.lr)
    graph: dict[str, Any] = {"capturable": True} if lr_tensor else {}
    name = hp.optimizer
    if name == "sgd":
        # Nesterov without momentum is meaningless (torch refuses it): a sampled momentum of 0 turns it off.
        return torch.optim.SGD(groups, lr=lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0,
                               weight_decay=hp.weight_decay, **({"fused": True} if lr_tensor else {}))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=hp.weight_decay, **graph)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=hp.weight_decay, **graph)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay, **graph)
    raise ValueError(f"unknown optimizer {name!r}")


class LRSchedule:
    """A trial's learning-rate schedule, stepped after every optimizer step.

    Every schedule runs in optimizer steps (epoch-based settings are converted: step_size and the
    multistep milestones are multiplied by steps_per_epoch, exponential's gamma is per epoch), so
    the learning rate moves smoothly inside an epoch. The exception is plateau, which can only judge
    the validation metric once per epoch: `epoch_end(value)` steps it, after any warm-up.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, per_step: LRScheduler | None = None,
                 plateau: ReduceLROnPlateau | None = None, plateau_from_epoch: int = 0):
        self.optimizer = optimizer
        self.per_step = per_step  # a torch LRScheduler stepped per optimizer step, or None
        self.plateau = plateau  # a ReduceLROnPlateau stepped per epoch, or None
        self.plateau_from_epoch = plateau_from_epoch
        self.epochs_seen = 0

    def step(self) -> None:
        if self.per_step is not None:
            self.per_step.step()

    def epoch_end(self, value: float) -> None:
        self.epochs_seen += 1
        if self.plateau is not None and self.epochs_seen > self.plateau_from_epoch:
            self.plateau.step(value)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Where the schedule stands (what a paused trial keeps): its torch schedulers' states and epochs seen."""
        return {
            "per_step": None if self.per_step is None else self.per_step.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "epochs_seen": self.epochs_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        self.epochs_seen = state["epochs_seen"]


def build_scheduler(optimizer: torch.optim.Optimizer, hp: HParams, steps_per_epoch: int,
                    direction: str = "maximize") -> LRSchedule:
    """The schedule named by hp.scheduler, with hp.warmup_epochs of linear warm-up before it.

    Warm-up is a LinearLR from 1% of lr composed with the main schedule by SequentialLR (as in
    torchvision's classification reference). onecycle has its own warm-up phase: warmup_epochs sets
    its pct_start instead. Its momentum is not cycled, so the searched momentum stays what it is.
    `direction` is the tuned metric's, which plateau watches.
    """
    spe = max(1, steps_per_epoch)
    epochs, warm = hp.epochs, min(hp.warmup_epochs, hp.epochs)
    main_steps = max(1, (epochs - warm) * spe)
    sched = torch.optim.lr_scheduler
    name = hp.scheduler
    plateau: ReduceLROnPlateau | None = None
    main: LRScheduler | None
    per_step: LRScheduler | None
    if name == "onecycle":
        total = epochs * spe
        # The peak comes at the first step after the warm-up, as LinearLR's warm-up does for the other
        # schedules. OneCycleLR divides by each phase's length (peak step, and total-1 - peak), so the
        # peak is clamped to leave both phases a step; too few steps for a warm-up: its default 30%.
        peak = min(warm * spe, total - 2)
        pct = (peak + 1) / total if warm and peak >= 1 else 0.3
        # Each group peaks at its own lr (the backbone's scaled one, see finetune.param_groups).
        max_lr = [g.get("base_lr", hp.lr) for g in optimizer.param_groups]
        per_step = sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct,
                                    cycle_momentum=False)
        return LRSchedule(optimizer, per_step)
    if name == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif name == "step":
        main = sched.StepLR(optimizer, step_size=(hp.step_size or max(1, epochs // 3)) * spe, gamma=hp.gamma)
    elif name == "multistep":
        # Milestones at 50% and 75% of the epochs, counted from the end of the warm-up.
        milestones = sorted({max(1, (int(f * epochs) - warm) * spe) for f in (0.5, 0.75)})
        main = sched.MultiStepLR(optimizer, milestones=milestones, gamma=hp.gamma)
    elif name == "exponential":
        main = sched.ExponentialLR(optimizer, gamma=hp.gamma ** (1 / spe))
    elif name == "plateau":
        mode: Literal["min", "max"] = "max" if direction == "maximize" else "min"
        plateau = sched.ReduceLROnPlateau(optimizer, mode=mode, factor=hp.gamma, patience=PLATEAU_PATIENCE)
        main = None
    elif name == "none":
        main = None
    else:
        raise ValueError(f"unknown scheduler {name!r}")
    if warm:
        warmup = sched.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warm * spe)
        per_step = warmup if main is None else sched.SequentialLR(optimizer, [warmup, main], milestones=[warm * spe])
    else:
        per_step = main
    return LRSchedule(optimizer, per_step, plateau, plateau_from_epoch=warm)


def _complete_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give every SGD parameter that has no momentum buffer yet a zero one.

    After unfreezing, a group can mix parameters that stepped (buffers) with ones that never did: fused
    SGD (the CUDA-graph path) takes its first-step branch only when no parameter of the group has a buffer,
    and otherwise hands torch._fused_sgd_ a None. A zero buffer steps exactly as that first step would
    (buf = grad, dampening being 0). Adam, AdamW and RMSprop create each parameter's state on its own.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if not group["momentum"]:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
