"""One trial: suggest → build data, model, trainer → train, report, prune → track → tell.

Runs inside a worker process. Whatever happens in the trial — pruning, a non-finite loss, running
out of memory, any exception, an interrupt — the trial is told to Optuna and its MLflow run is closed
before this returns or re-raises; the worker then goes on with the next trial.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from hpsearch import study as study_mod
from hpsearch.params import HParams
from hpsearch.spec import ParamSpec, Spec
from hpsearch.tracking import TrialRun


class Interrupted(BaseException):
    """Raised inside a worker when the run is being stopped (Ctrl-C / SIGTERM): the trial ends as FAIL."""


class InterruptGuard:
    """Lets a stop request interrupt training at once, but never the bookkeeping that closes a trial."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False

    def request(self) -> None:
        """Called from the worker's SIGTERM handler."""
        if self.critical:
            self.pending = True
        else:
            raise Interrupted()


GUARD = InterruptGuard()


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed and the trial number (stable across machines)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


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


_ABSENT = object()


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
    if p.type == "float":
        return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
    if p.type == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return trial.suggest_categorical(p.name, list(p.choices))


def trial_params(spec: Spec, searched: dict[str, Any]) -> dict[str, Any]:
    """What the trial trains with: fixed values, then searched values (the spec refuses overlaps)."""
    return {**spec.train, **searched}


def hparams_for(spec: Spec, searched: dict[str, Any]) -> HParams:
    return HParams.from_dict(trial_params(spec, searched))


def run_params(spec: Spec, hp: HParams) -> dict[str, Any]:
    """MLflow params of a run: every hyperparameter under its own name, plus model and dataset."""
    return {
        **hp.as_dict(),
        "model": spec.task.model.name,
        "weights": spec.task.model.weights,
        "dataset": spec.task.data.name,
        "image_size": spec.task.data.image_size,
    }


@dataclass
class TrialOutcome:
    number: int
    state: str
    value: float | None
    reason: str | None = None
    seconds: float = 0.0


@dataclass
class TrialContext:
    """What a worker keeps across trials: the spec, its stores, the device and the live-view hook."""

    spec: Spec
    study: optuna.Study
    client: Any  # MlflowClient
    experiment_id: str
    parent_run_id: str | None
    device: str = "cpu"
    on_event: Callable[[dict], None] = field(default=lambda event: None)


def load_task_data(spec: Spec, device: str):
    """The task's dataset on `device`, normalised for the model's weights (cached per process)."""
    from hpsearch import data as data_mod
    from hpsearch import models

    d = spec.task.data
    mean, std = models.normalization(spec.task.model.name, spec.task.model.weights)
    cfg = data_mod.DataConfig(
        name=d.name,
        root=d.root,
        val_fraction=d.val_fraction,
        image_size=d.image_size,
        download=d.download,
        augment=d.augment,
        num_classes=d.num_classes,
        samples=d.samples,
        in_memory=d.in_memory if isinstance(d.in_memory, str) else str(d.in_memory).lower(),
        split_seed=spec.study.seed,
    )
    return data_mod.load_data(cfg, device, mean, std)


def build_model_for(spec: Spec, hp: HParams, num_classes: int, weights: str | None = None):
    from hpsearch import models

    return models.build_model(
        spec.task.model.name,
        num_classes,
        weights=spec.task.model.weights if weights is None else weights,
        dropout=hp.dropout,
        freeze=hp.freeze,
    )


def build_trainer(spec: Spec, hp: HParams, device: str, seed: int):
    """Data (cached per process), model and trainer for one set of hyperparameters."""
    from hpsearch import train

    task_data = load_task_data(spec, device)
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
    )
    return trainer, task_data


def _describe_oom(hp: HParams, spec: Spec, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"out of memory: {spec.task.model.name} at batch_size={hp.batch_size}, "
        f"image_size={spec.task.data.image_size or 'native'} ({first})"
    )


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_trial(ctx: TrialContext, trial_id: int) -> TrialOutcome:
    """Run the trial Optuna created as `trial_id` to its end and tell its result."""
    from hpsearch.train import NonFiniteLoss

    spec, study = ctx.spec, ctx.study
    # The parent created this trial: refresh the storage's cache (RDB storages keep one) so it knows it.
    study.get_trials(deepcopy=False)
    trial = optuna.trial.Trial(study, trial_id)
    number = trial.number
    started = time.perf_counter()
    run: TrialRun | None = None
    trainer = None
    state, value, reason, kind = "FAIL", None, None, "error"
    hp = None
    try:
        searched = suggest(trial, spec.search_space, spec.train)
        hp = hparams_for(spec, searched)
        run = TrialRun.start(
            ctx.client, ctx.experiment_id, ctx.parent_run_id, spec.study.name, number, run_params(spec, hp)
        )
        study._storage.set_trial_user_attr(trial_id, study_mod.ATTR_RUN_ID, run.run_id)
        study._storage.set_trial_user_attr(trial_id, study_mod.ATTR_WORKER_PID, os.getpid())
        ctx.on_event({"event": "start", "trial": number, "epochs": hp.epochs, "params": searched})

        trainer, _ = build_trainer(spec, hp, ctx.device, trial_seed(spec.study.seed, number))
        metric = spec.study.metric

        def on_epoch(stats) -> None:
            metrics = stats.as_dict()
            run.log_epoch(stats.epoch, metrics)
            trial.report(metrics[metric], stats.epoch)
            ctx.on_event(
                {"event": "epoch", "trial": number, "epoch": stats.epoch, "epochs": hp.epochs, **metrics}
            )
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}")

        trainer.fit(on_epoch)
        state, value = "COMPLETE", trainer.best_value
    except optuna.TrialPruned:
        state, value = "PRUNED", trainer.best_value if trainer is not None else None
    except NonFiniteLoss as exc:
        reason, kind = str(exc), "nonfinite"
    except Interrupted:
        reason, kind = "interrupted: the run was stopped (Ctrl-C or SIGTERM)", "interrupted"
    except Exception as exc:  # any failure ends this trial, never the worker
        if hp is not None and _is_oom(exc):
            reason, kind = _describe_oom(hp, spec, exc), "oom"
        else:
            reason = f"{type(exc).__name__}: {exc}"
            tb = traceback.format_exc(limit=-3)
            reason = f"{reason}\n{tb}" if tb else reason
    finally:
        GUARD.critical = True
        try:
            _close_trial(ctx, trial, run, trainer, state, value, reason, kind)
        finally:
            GUARD.critical = False
    outcome = TrialOutcome(number, state, value, reason, time.perf_counter() - started)
    ctx.on_event({"event": "end", "trial": number, "state": state, "value": value, "reason": reason,
                  "kind": kind if state == "FAIL" else None})
    if kind == "interrupted" or GUARD.pending:
        raise Interrupted()
    return outcome


def _close_trial(ctx, trial, run, trainer, state, value, reason, kind) -> None:
    """Checkpoint (per policy), close the MLflow run, tell Optuna, free the device memory."""
    spec, study = ctx.spec, ctx.study
    checkpoint = None
    if run is not None and trainer is not None and state != "FAIL" and spec.tracking.checkpoints != "none":
        if spec.tracking.checkpoints == "all" or state == "COMPLETE":
            checkpoint = trainer.best_state_dict_cpu()
    if state == "COMPLETE" and value is None:
        state, reason, kind = "FAIL", "the trainer produced no value", "error"
    if reason:
        study._storage.set_trial_user_attr(trial._trial_id, study_mod.ATTR_FAIL_REASON, reason.splitlines()[0])
        study._storage.set_trial_user_attr(trial._trial_id, "hpsearch.fail_kind", kind)
    if run is not None:
        interrupted = kind == "interrupted"
        # Closing the run (and writing the checkpoint) goes to the writer thread, except when the
        # worker is about to exit.
        run.finish(state, reason, status="KILLED" if interrupted else None, checkpoint=checkpoint, wait=interrupted)
    if state == "COMPLETE":
        study.tell(trial, value)
    elif state == "PRUNED":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
    if trainer is not None:
        trainer.release()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:
        pass
