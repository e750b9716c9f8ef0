"""From a spec to what trains: hyperparameters, seeds, the dataset, a teacher, the model, the trainer, the run's params.

Shared by a search's trials (objective.py) and single runs (`hpsearch train`, `best --evaluate`: retrain.py).
torch is imported inside the functions: the parent process, which only plans and watches, never loads it. The
spec's side (optuna, pyyaml) is imported only where a function needs it: the trainer tests import this module on
GPU boxes that have torch alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpsearch.core.hparams import COMPRESSION_HPARAMS, DISTILL_HPARAMS, TASK_CHOICES, HParams

if TYPE_CHECKING:
    from torch import nn

    from hpsearch.deploy.costs import LatencyFormat
    from hpsearch.engine.data import TaskData
    from hpsearch.engine.teacher import Teacher
    from hpsearch.engine.train import Trainer
    from hpsearch.spec.spec_types import Spec

# Teachers loaded in this process, beside data.load_data's datasets: a warm worker loads its teacher once.
_TEACHERS: dict[tuple, Teacher] = {}


def trial_params(spec: Spec, searched: dict[str, Any]) -> dict[str, Any]:
    """What the trial trains with: fixed values, then searched values (the spec refuses overlaps); a searched
    model or image size is the task's (spec.with_task_choices), not a hyperparameter."""
    return {**spec.train, **{k: v for k, v in searched.items() if k not in TASK_CHOICES}}


def hparams_for(spec: Spec, searched: dict[str, Any]) -> HParams:
    return HParams.from_dict(trial_params(spec, searched))


def run_params(spec: Spec, hp: HParams, device: str | None = None) -> dict[str, Any]:
    """MLflow params of a run: every hyperparameter under its own name (distillation's only with a teacher), plus
    model and dataset; with the trial's `device`, in a study that minimises latency_ms, how it is measured
    (latency_device, latency_precision: latency_setup)."""
    values = hp.as_dict()
    if device is not None and "latency_ms" in spec.study.cost_metrics:
        from hpsearch.deploy import costs

        where, fmt = latency_setup(spec, device)
        # On the CPU on one thread (costs.one_thread_on), as measure_trained times it.
        values["latency_device"] = costs.describe_device(where, threads=1)
        values["latency_precision"] = fmt.describe()
    if spec.task.teacher is None:
        for name in DISTILL_HPARAMS:
            del values[name]
    if not spec.study.multi:  # compression after training is measured by multi-objective studies only
        for name in COMPRESSION_HPARAMS:
            del values[name]
    from hpsearch.engine.models import weights_identity

    return {
        **values,
        "model": spec.task.model.name,
        "weights": spec.task.model.weights,
        "start_weights": weights_identity(spec.task.model.name, spec.task.model.weights),
        "dataset": spec.task.data.name,
        "image_size": spec.task.data.image_size,
    }


def load_task_data(spec: Spec, device: str) -> TaskData:
    """The task's dataset on `device`, normalised for the model's weights (cached per process)."""
    from hpsearch.engine import data, models

    mean, std = models.normalization(spec.task.model.name, spec.task.model.weights)
    # The validation split follows the study seed: trials of one study share it.
    return data.load_data(spec.task.data, device, mean, std, split_seed=spec.study.seed)


def load_teacher(spec: Spec, device: str, num_classes: int) -> Teacher | None:
    """The spec's teacher on `device` (None without one), cached per process by its identity, for batches
    normalised for the spec's student."""
    if spec.task.teacher is None:
        return None
    from hpsearch.engine import models, teacher
    from hpsearch.spec import teacher_spec

    source = teacher_spec.resolve(spec.task.teacher)
    student = models.normalization(spec.task.model.name, spec.task.model.weights)
    key = (source.identity, num_classes, device, student)
    if key not in _TEACHERS:
        _TEACHERS.clear()  # a worker serves one spec: a teacher it no longer uses gives its memory back
        trained_with = models.normalization(source.model, source.trained_with)
        built = teacher.build_teacher(source.model, num_classes, source.weights, trained_with, student)
        _TEACHERS[key] = built.to(device)
    return _TEACHERS[key]


def clear_teacher_cache() -> None:
    """Forget the loaded teacher, so its memory (device memory included) can be freed."""
    _TEACHERS.clear()


def build_model_for(spec: Spec, hp: HParams, num_classes: int, weights: str | None = None) -> nn.Module:
    from hpsearch.engine import models

    return models.build_model(
        spec.task.model.name,
        num_classes,
        weights=spec.task.model.weights if weights is None else weights,
        dropout=hp.dropout,
        bn_momentum=hp.bn_momentum,
        freeze=hp.freeze,
        unfrozen_blocks=hp.unfrozen_blocks,
    )


def rebuilt_model(spec: Spec, hp: HParams, state: dict[str, Any]) -> nn.Module:
    """The trial's network holding `state` (its checkpoint's weights), with as many classes as the
    checkpoint's head has; no pretrained weights are loaded first (they would be overwritten)."""
    import torch

    from hpsearch.core.errors import RunFailure

    with torch.device("meta"):  # a shell, no memory, only to learn the head's name
        shell = build_model_for(spec, hp, 1, weights="none")
    head_weight = state.get(f"{getattr(shell, 'hpsearch_head', '')}.weight")
    if head_weight is None:
        raise RunFailure(f"the checkpoint does not fit {spec.task.model.name}: it has no classifier head")
    model = build_model_for(spec, hp, int(head_weight.shape[0]), weights="none")
    model.load_state_dict(state)
    return model


def latency_setup(spec: Spec, device: str) -> tuple[str, LatencyFormat]:
    """Where a trial's latency is measured, and in which format: on its own device in the format it trained in
    (bf16 channels_last on CUDA, train.training_format), or on the CPU in fp32 for every trial of a study that
    may quantize (int8 runs on the CPU only, and one study's latencies must compare)."""
    from hpsearch.deploy import costs
    from hpsearch.engine import train

    quantizes = "quantize" in spec.search_space or spec.train.get("quantize", "none") != "none"
    where = "cpu" if quantizes else device
    bf16, channels_last = train.training_format(where, train.TrainSettings(**spec.settings))
    return where, costs.LatencyFormat(bf16=bf16, channels_last=channels_last)


def measure_trained(spec: Spec, hp: HParams, trainer: Trainer, device: str) -> dict[str, float]:
    """A multi-objective trial's measurements of its best epoch's model, compressed first when hp says
    (prune_amount, then quantize; no fine-tune): its deployment costs (costs.COST_METRICS) when an objective
    asks, and, when compressed, val_accuracy and val_loss again. Returned under the objectives' names.

    Latency is measured where and as latency_setup says (a CPU search states CPU latency, a GPU search GPU
    latency). CPU latency is on one thread (costs.one_thread_on).
    """
    from hpsearch.deploy import costs
    from hpsearch.engine import train

    weights = trainer.best_state_dict_cpu()
    assert weights is not None  # called for a trial that finished an epoch
    # A fresh model with the best weights: no training hooks, captured graphs or compile wrappers in the timing.
    model = rebuilt_model(spec, hp, weights)
    where, fmt = latency_setup(spec, device)
    measured: dict[str, float] = {}
    if hp.prune_amount or hp.quantize != "none":
        from hpsearch.deploy import compression

        if hp.prune_amount:
            compression.prune_global(model, hp.prune_amount)
            compression.make_permanent(model)
        data = trainer.data if where == device else load_task_data(spec, where)
        if hp.quantize == "int8":
            batches = compression.calibration_batches(load_task_data(spec, "cpu").train)
            model = compression.quantize_int8(model, batches, data.image_size)
        else:  # the batches are on `where` (a GPU's, when the trial trained there): the model goes there too
            model.to(where)
        measured["val_loss"], measured["val_accuracy"] = train.evaluate(
            model, data.val, device=where, settings=train.TrainSettings(**spec.settings))
    if spec.study.cost_metrics:
        with costs.one_thread_on(where):  # the deployable file goes to a temporary folder
            measured.update(costs.measure(model, trainer.data.image_size, where, fmt=fmt).as_dict())
    return measured


def build_trainer(spec: Spec, hp: HParams, device: str, seed: int) -> tuple[Trainer, TaskData]:
    """Data (cached per process), model and trainer for one set of hyperparameters."""
    from hpsearch.engine import train

    task_data = load_task_data(spec, device)
    teacher = load_teacher(spec, device, task_data.num_classes)  # before the seed: the student's init is unmoved
    train.seed_everything(seed)
    model = build_model_for(spec, hp, task_data.num_classes)
    trainer = train.Trainer(
        model,
        task_data,
        hp,
        device=device,
        settings=train.TrainSettings(**spec.settings),
        metric=spec.study.metric,
        direction=spec.study.direction,
        seed=seed,
        teacher=teacher,
    )
    return trainer, task_data
