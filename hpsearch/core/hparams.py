"""The trainer's vocabulary: every hyperparameter it understands, with defaults and allowed values.

Torch-free on purpose: the spec validates against it without importing torch, and the trainer
(data/models/train, which need torch alone) reads its defaults from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
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
SETTING_MODES = ("auto", "off")  # the values of every train setting (TrainSettings)


def natural_direction(metric: str) -> str:
    """The only sensible direction for an objective: accuracy up, losses and costs down."""
    return "maximize" if metric == "val_accuracy" else "minimize"


@dataclass(frozen=True)
class Rule:
    """What values a hyperparameter takes: its type, and either its choices or a numeric bound."""

    kind: type
    choices: tuple[str, ...] = ()
    bound: Callable[[float], bool] | None = None
    says: str = ""  # the bound in words: "> 0", "in [0, 1)"


# The numeric bounds hyperparameters share, in words and as a test.
_POSITIVE = {"bound": lambda v: v > 0, "says": "> 0"}
_NON_NEGATIVE = {"bound": lambda v: v >= 0, "says": ">= 0"}
_FRACTION = {"bound": lambda v: 0 <= v < 1, "says": "in [0, 1)"}  # a share that cannot be all
_UNIT = {"bound": lambda v: 0 < v <= 1, "says": "in (0, 1]"}  # a factor that cannot be zero
_WEIGHT = {"bound": lambda v: 0 <= v <= 1, "says": "in [0, 1]"}


def _hp(default: Any, kind: type, **rule: Any) -> Any:
    """A hyperparameter's field: its default and its Rule, in one line of HParams."""
    return field(default=default, metadata={"rule": Rule(kind, **rule)})


@dataclass(frozen=True)
class HParams:
    """One trial's complete set of training hyperparameters (searched and fixed merged): the one table of
    every hyperparameter's name, default, type and allowed values."""

    lr: float = _hp(0.01, float, **_POSITIVE)
    batch_size: int = _hp(128, int, **_POSITIVE)
    epochs: int = _hp(10, int, **_POSITIVE)
    dropout: float | None = _hp(None, float, **_FRACTION)  # None keeps the model's own dropout (or none)
    # BatchNorm's running-statistics momentum; None keeps the model's own (torchvision's MobileNetV3 and
    # EfficientNet use 0.01, tuned for long ImageNet runs: a short budget leaves their statistics at init).
    bn_momentum: float | None = _hp(None, float, **_UNIT)
    optimizer: str = _hp("sgd", str, choices=OPTIMIZERS)
    momentum: float = _hp(0.9, float, **_FRACTION)
    nesterov: bool = _hp(False, bool)
    weight_decay: float = _hp(0.0, float, **_NON_NEGATIVE)
    scheduler: str = _hp("none", str, choices=SCHEDULERS)
    warmup_epochs: int = _hp(0, int, **_NON_NEGATIVE)
    step_size: int | None = _hp(None, int, **_POSITIVE)  # step: epochs between decays; None → max(1, epochs // 3)
    gamma: float = _hp(0.1, float, **_UNIT)
    label_smoothing: float = _hp(0.0, float, **_FRACTION)
    # none | backbone: only the head trains | partial: the head and the last stages train
    freeze: str = _hp("none", str, choices=FREEZE_MODES)
    unfrozen_blocks: int | None = _hp(None, int, **_NON_NEGATIVE)  # freeze=partial: how many last stages train
    backbone_lr_scale: float = _hp(1.0, float, **_UNIT)  # the backbone's lr is lr × this; the head's is lr
    # the stage k stages below the head learns at lr × backbone_lr_scale × layer_decay^k
    layer_decay: float = _hp(1.0, float, **_UNIT)
    unfreeze_epoch: int | None = _hp(None, int, **_POSITIVE)  # what `freeze` froze trains from this epoch on
    patience: int | None = _hp(None, int, **_POSITIVE)  # early stopping inside a trial; None → off
    # With task.teacher (knowledge distillation): the loss is (1 - alpha) · CE + alpha · T² · KL(teacher ‖ student).
    distill_alpha: float = _hp(0.5, float, **_WEIGHT)
    distill_temperature: float = _hp(4.0, float, **_POSITIVE)
    # Compression after training (multi-objective studies: the objectives are measured on the compressed model).
    # prune_amount: this fraction of the Conv2d/Linear weights zeroed, one global magnitude threshold
    prune_amount: float = _hp(0.0, float, **_FRACTION)
    quantize: str = _hp("none", str, choices=QUANTIZE_MODES)  # int8: post-training quantization for the CPU

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
# What population-based training may change mid-training: each is read afresh at every step (an optimizer
# group's lr, weight_decay and momentum, the dropout layers' p, the loss's smoothing and distillation mix), so
# a member that copies another goes on with new values and no rebuilt model. The rest (batch size, epochs,
# optimizer, scheduler, freezing, the model and its input size) shape what was built and stay fixed.
MUTABLE_HPARAMS = ("lr", "weight_decay", "momentum", "dropout", "label_smoothing", "backbone_lr_scale",
                   "distill_alpha", "distill_temperature")
# Hyperparameters that mean something only with a teacher (the spec refuses them without one).
DISTILL_HPARAMS = ("distill_alpha", "distill_temperature")
# Hyperparameters applied after training, measured only by a multi-objective study's objectives.
COMPRESSION_HPARAMS = ("prune_amount", "quantize")



@dataclass(frozen=True)
class TrainSettings:
    """Settings of the `train:` block that are not hyperparameters (never searched): how the trainer runs on
    its device, not what it learns. Each is auto | off."""

    cuda_graphs: str = "auto"  # auto: capture the train step in a CUDA graph on CUDA; never on CPU
    amp: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | off: fp32
    channels_last: str = "auto"  # auto: on CUDA only | off

    def __post_init__(self) -> None:
        for name in TRAIN_SETTINGS:
            if getattr(self, name) not in SETTING_MODES:
                raise ValueError(f"train.{name} must be one of {', '.join(SETTING_MODES)}, got {getattr(self, name)!r}")


TRAIN_SETTINGS = {f.name: f.default for f in fields(TrainSettings)}

HPARAM_RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(HParams)}
HPARAM_TYPES: dict[str, type] = {name: rule.kind for name, rule in HPARAM_RULES.items()}
HPARAM_CHOICES: dict[str, tuple[str, ...]] = {name: rule.choices for name, rule in HPARAM_RULES.items() if rule.choices}


def check_hparam_value(name: str, value: Any, show: Callable[[Any], str] = repr) -> str | None:
    """Return why `value` is not a valid value of hyperparameter `name`, or None when it is; `show` quotes
    the value (the spec passes its length-capped repr)."""
    rule = HPARAM_RULES[name]
    if rule.choices:
        if value not in rule.choices:
            return f"must be one of {', '.join(rule.choices)}, got {show(value)}"
        return None
    if rule.kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {show(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {show(value)}"
    if rule.kind is int and not float(value).is_integer():
        return f"must be a whole number, got {show(value)}"
    assert rule.bound is not None  # every numeric hyperparameter has one
    return None if rule.bound(value) else f"must be {rule.says}, got {show(value)}"
