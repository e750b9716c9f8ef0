"""The trainer's vocabulary: every hyperparameter it understands, with defaults and allowed values.

Torch-free on purpose: the spec validates against it without importing torch, and the trainer
(data/models/train, which need torch alone) reads its defaults from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("cosine", "step", "multistep", "exponential", "onecycle", "plateau", "none")
FREEZE_MODES = ("none", "backbone", "partial")
DATASETS = ("cifar10", "cifar100", "imagefolder", "digits", "fake")
AUGMENTS = ("standard", "none")
# What one epoch of the trainer reports; `study.metric` must be one of the first three.
METRICS = ("val_accuracy", "val_loss", "train_loss")
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_second")
DIRECTIONS = ("maximize", "minimize")
# What a trained model costs to deploy, measured once at a trial's end when an objective asks for it (costs.py).
COST_METRICS = ("latency_ms", "params_m", "size_mb")
OBJECTIVE_METRICS = METRICS + COST_METRICS
# Task settings a search space may search too (categorical only): a trial trains the chosen backbone at the
# chosen input size (spec.with_task_choices); they are not hyperparameters of the trainer.
TASK_CHOICES: dict[str, type] = {"model": str, "image_size": int}
QUANTIZE_MODES = ("none", "int8")
CHECKPOINT_POLICIES = ("complete", "all", "none")
CUDA_GRAPH_MODES = ("auto", "off")


def natural_direction(metric: str) -> str:
    """The only sensible direction for an objective: accuracy up, losses and costs down."""
    return "maximize" if metric == "val_accuracy" else "minimize"


@dataclass(frozen=True)
class HParams:
    """One trial's complete set of training hyperparameters (searched and fixed merged)."""

    lr: float = 0.01
    batch_size: int = 128
    epochs: int = 10
    dropout: float | None = None  # None keeps the model's own dropout (or none)
    # BatchNorm's running-statistics momentum; None keeps the model's own (torchvision's MobileNetV3 and
    # EfficientNet use 0.01, tuned for long ImageNet runs: a short budget leaves their statistics at init).
    bn_momentum: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: int = 0
    step_size: int | None = None  # step: epochs between decays; None → max(1, epochs // 3)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    freeze: str = "none"  # none | backbone: only the head trains | partial: the head and the last stages train
    unfrozen_blocks: int | None = None  # freeze=partial: how many of the backbone's last stages train
    backbone_lr_scale: float = 1.0  # the backbone's lr is lr × this; the head's is lr
    layer_decay: float = 1.0  # the stage k stages below the head learns at lr × backbone_lr_scale × layer_decay^k
    unfreeze_epoch: int | None = None  # what `freeze` froze trains from this (1-based) epoch on; None → never
    patience: int | None = None  # early stopping inside a trial; None → off
    # With task.teacher (knowledge distillation): the loss is (1 - alpha) · CE + alpha · T² · KL(teacher ‖ student).
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    # Compression after training (multi-objective studies: the objectives are measured on the compressed model).
    prune_amount: float = 0.0  # this fraction of the Conv2d/Linear weights zeroed, one global magnitude threshold
    quantize: str = "none"  # int8: post-training quantization for the CPU

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s): {', '.join(unknown)}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


HYPERPARAMETERS = tuple(f.name for f in fields(HParams))
# Hyperparameters that mean something only with a teacher (the spec refuses them without one).
DISTILL_HPARAMS = ("distill_alpha", "distill_temperature")
# Hyperparameters applied after training, measured only by a multi-objective study's objectives.
COMPRESSION_HPARAMS = ("prune_amount", "quantize")

# Settings of the `train:` block that are not hyperparameters (never searched).
TRAIN_SETTINGS = {"cuda_graphs": "auto", "amp": "auto", "channels_last": "auto"}

# The allowed values of a categorical hyperparameter, and its value type.
HPARAM_TYPES: dict[str, type] = {
    "lr": float,
    "batch_size": int,
    "epochs": int,
    "dropout": float,
    "bn_momentum": float,
    "optimizer": str,
    "momentum": float,
    "nesterov": bool,
    "weight_decay": float,
    "scheduler": str,
    "warmup_epochs": int,
    "step_size": int,
    "gamma": float,
    "label_smoothing": float,
    "freeze": str,
    "unfrozen_blocks": int,
    "backbone_lr_scale": float,
    "layer_decay": float,
    "unfreeze_epoch": int,
    "patience": int,
    "distill_alpha": float,
    "distill_temperature": float,
    "prune_amount": float,
    "quantize": str,
}
HPARAM_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "freeze": FREEZE_MODES,
    "quantize": QUANTIZE_MODES,
}


def check_hparam_value(name: str, value: Any, show: Callable[[Any], str] = repr) -> str | None:
    """Return why `value` is not a valid value of hyperparameter `name`, or None when it is; `show` quotes
    the value (the spec passes its length-capped repr)."""
    py_type = HPARAM_TYPES[name]
    if name in HPARAM_CHOICES:
        if value not in HPARAM_CHOICES[name]:
            return f"must be one of {', '.join(HPARAM_CHOICES[name])}, got {show(value)}"
        return None
    if py_type is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {show(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {show(value)}"
    if py_type is int and not float(value).is_integer():
        return f"must be a whole number, got {show(value)}"
    in_bounds = {
        "lr": (value > 0, "> 0"),
        "batch_size": (value > 0, "> 0"),
        "epochs": (value > 0, "> 0"),
        "dropout": (0 <= value < 1, "in [0, 1)"),
        "bn_momentum": (0 < value <= 1, "in (0, 1]"),
        "momentum": (0 <= value < 1, "in [0, 1)"),
        "weight_decay": (value >= 0, ">= 0"),
        "warmup_epochs": (value >= 0, ">= 0"),
        "step_size": (value > 0, "> 0"),
        "gamma": (0 < value <= 1, "in (0, 1]"),
        "label_smoothing": (0 <= value < 1, "in [0, 1)"),
        "patience": (value > 0, "> 0"),
        "unfrozen_blocks": (value >= 0, ">= 0"),
        "backbone_lr_scale": (0 < value <= 1, "in (0, 1]"),
        "layer_decay": (0 < value <= 1, "in (0, 1]"),
        "unfreeze_epoch": (value > 0, "> 0"),
        "distill_alpha": (0 <= value <= 1, "in [0, 1]"),
        "distill_temperature": (value > 0, "> 0"),
        "prune_amount": (0 <= value < 1, "in [0, 1)"),
    }
    ok, rule = in_bounds[name]
    return None if ok else f"must be {rule}, got {show(value)}"
