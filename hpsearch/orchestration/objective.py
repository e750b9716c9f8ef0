"""One trial's life: suggest → build data, model, trainer → train, report, prune → track → tell.

Runs inside a worker process. Whatever happens in the trial — pruning, a non-finite loss, running
out of memory, any exception, an interrupt — the trial is told to Optuna and its MLflow run is closed
before this returns or re-raises; the worker then goes on with the next trial.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from hpsearch.core import record_keys
from hpsearch.core.hparams import HParams
from hpsearch.core.interrupts import GUARD, Interrupted
from hpsearch.core.record_keys import Ended, FailureKind
from hpsearch.core.seeding import trial_seed
from hpsearch.orchestration import events
from hpsearch.orchestration.builders import build_trainer, hparams_for, measure_trained, run_params
from hpsearch.orchestration.events import EpochEnded, TrialEnded, TrialStarted, WorkerEvent
from hpsearch.search import trial_access
from hpsearch.search.suggest import suggest
from hpsearch.spec.spec_types import Spec
from hpsearch.spec.study_spec import with_task_choices
from hpsearch.tracking.study_runs import TrialRun

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from hpsearch.engine.train import EpochStats, Trainer


@dataclass
class TrialOutcome:
    number: int
    state: str
    value: float | None
    reason: str | None = None


@dataclass
class TrialContext:
    """What a worker keeps across trials: the spec, its stores, the device and where events go."""

    spec: Spec
    study: optuna.Study
    client: MlflowClient
    experiment_id: str
    parent_run_id: str | None
    device: str = "cpu"
    on_event: Callable[[WorkerEvent], None] = field(default=lambda event: None)


def _describe_oom(hp: HParams, spec: Spec, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"out of memory: {spec.task.model.name} at batch_size={hp.batch_size}, "
        f"image_size={spec.task.data.image_size or 'native'} ({first})"
    )


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_trial(context: TrialContext, trial_id: int) -> TrialOutcome:
    """Run the trial Optuna created as `trial_id` (in the parent) to its end and tell its result."""
    from hpsearch.engine.train import NonFiniteLoss

    spec, study = context.spec, context.study
    trial = trial_access.open_trial(study, trial_id)
    number = trial.number
    run: TrialRun | None = None
    trainer: Trainer | None = None
    state: str = Ended.FAIL
    value, reason, failure = None, None, FailureKind.ERROR
    values: list[float] | None = None  # a multi-objective study's, in the order of spec.study.targets
    hp = None
    try:
        searched = suggest(trial, spec.search_space, spec.train)
        spec = with_task_choices(spec, searched)  # this trial's backbone and input size, when searched
        hp = hparams_for(spec, searched)
        params = run_params(spec, hp, context.device)
        # A confirmation's retraining says which configuration and seed it is.
        confirming = {k: str(v) for k, v in trial.user_attrs.items() if k.startswith(record_keys.CONFIRM_ATTR_PREFIX)}
        run = TrialRun.start(context.client, context.experiment_id, context.parent_run_id, spec.study.name, number,
                             params, extra_tags=confirming)
        trial.set_user_attr(record_keys.ATTR_RUN_ID, run.run_id)
        trial.set_user_attr(record_keys.ATTR_START_WEIGHTS, params["start_weights"])
        trial.set_user_attr(record_keys.ATTR_WORKER_PID, os.getpid())
        context.on_event(TrialStarted(number, hp.epochs, searched))

        # A confirmation's retraining brings its own training seed; a search's trial takes its number's.
        seed = trial.user_attrs.get(record_keys.ATTR_CONFIRM_SEED, trial_seed(spec.study.seed, number))
        trainer, _ = build_trainer(spec, hp, context.device, seed)
        if trainer.group_lrs:  # fine-tuning's per-group learning rates (lr.head, lr.stage_7, …) as resolved
            run.log_epoch(1, trainer.group_lrs)
        on_epoch = _epoch_hook(context, trial, run, hp.epochs)
        trainer.fit(on_epoch)
        state, value = Ended.COMPLETE, trainer.best_value
        if spec.study.multi and value is not None:
            values = _objective_values(spec, hp, trainer, run, context.device)
    except optuna.TrialPruned:
        state, value = Ended.PRUNED, trainer.best_value if trainer is not None else None
    except NonFiniteLoss as exc:
        reason, failure = str(exc), FailureKind.NONFINITE
    except Interrupted:
        reason, failure = "interrupted: the run was stopped (Ctrl-C or SIGTERM)", FailureKind.INTERRUPTED
    except Exception as exc:  # any failure ends this trial, never the worker
        if hp is not None and _is_oom(exc):
            reason, failure = _describe_oom(hp, spec, exc), FailureKind.OOM
        else:
            reason = f"{type(exc).__name__}: {exc}"
            tb = traceback.format_exc(limit=-3)
            reason = f"{reason}\n{tb}" if tb else reason
    finally:
        with GUARD.critical_section():
            state, reason, failure = _close_trial(context, trial, run, trainer, state, values or value, reason,
                                                  failure)
    outcome = TrialOutcome(number, state, value, reason)
    context.on_event(TrialEnded(number, state, value, reason, failure if state == Ended.FAIL else None))
    if failure is FailureKind.INTERRUPTED or GUARD.pending:
        raise Interrupted()
    return outcome


def _epoch_hook(context: TrialContext, trial: optuna.Trial, run: TrialRun, epochs: int
                ) -> Callable[[EpochStats], None]:
    """Per epoch: log the metrics, report the study's metric, tell the live view, prune if Optuna says so
    (not in a multi-objective study: Optuna neither takes its intermediate values nor prunes it)."""
    metric, single = context.spec.study.metric, not context.spec.study.multi

    def on_epoch(stats: EpochStats) -> None:
        metrics = stats.as_dict()
        run.log_epoch(stats.epoch, metrics)
        if single:
            trial.report(metrics[metric], stats.epoch)
        else:
            trial.set_user_attr(record_keys.ATTR_EPOCHS, stats.epoch)
        context.on_event(EpochEnded(trial.number, stats.epoch, epochs, metrics))
        if single and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}")

    return on_epoch


def _objective_values(spec: Spec, hp: HParams, trainer: Trainer, run: TrialRun, device: str) -> list[float]:
    """A multi-objective trial's values: its epoch metrics at the best epoch (the one its checkpoint keeps),
    measured again after compression when it compresses (prune_amount, quantize), and what the model costs to
    deploy when an objective asks (measured now, logged to its run: `compressed_*` for the re-measured ones)."""
    best = trainer.history[(trainer.best_epoch or len(trainer.history)) - 1].as_dict()
    measured = measure_trained(spec, hp, trainer, device)
    if measured:
        run.log_metrics({(f"compressed_{k}" if k in best else k): v for k, v in measured.items()})
        best.update(measured)
    return [best[o.metric] for o in spec.study.targets]


def _close_trial(context: TrialContext, trial: optuna.Trial, run: TrialRun | None, trainer: Trainer | None,
                 state: str, value: float | list[float] | None, reason: str | None, failure: FailureKind
                 ) -> tuple[str, str | None, FailureKind]:
    """Checkpoint (per policy), close the MLflow run, tell Optuna, free the device memory.

    Returns (state, reason, failure) as told: a COMPLETE trial without a value is told FAIL.
    """
    spec, study = context.spec, context.study
    checkpoint = None
    if run is not None and trainer is not None and _keeps_checkpoint(spec.tracking.checkpoints, state):
        checkpoint = trainer.best_state_dict_cpu()
    if state == Ended.COMPLETE and value is None:
        state, reason, failure = Ended.FAIL, "the trainer produced no value", FailureKind.ERROR
    if run is not None:
        interrupted = failure is FailureKind.INTERRUPTED
        # Closing the run (and writing the checkpoint) goes to the writer thread, except when the
        # worker is about to exit.
        # A checkpoint that cannot be stored is shown by the parent at once and counted in the summary.
        run.finish(state, reason, status="KILLED" if interrupted else None, checkpoint=checkpoint, wait=interrupted,
                   on_checkpoint_error=lambda error: context.on_event(events.CheckpointFailed(trial.number, error)))
    try:
        if state == Ended.COMPLETE:
            if checkpoint is not None:  # told now, stored by the writer thread a moment later
                trial.set_user_attr(record_keys.ATTR_CHECKPOINT_PENDING, True)
            study.tell(trial, value)
        elif state == Ended.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial_access.fail_trial(study, trial, reason, failure)
    except (ValueError, RuntimeError):  # Optuna refuses to tell a trial that has ended
        # Another run took this trial for orphaned (our heartbeat was late) and failed it: its result
        # stays in MLflow, the worker goes on with the next trial.
        told = trial_access.get_trial(study, trial_access.trial_id(trial)).state.name
        if told == state:  # a tell retried after its first try had in fact gone through
            pass
        else:
            reason = f"ended {state} here, but another run had already marked it {told} (it looked orphaned)"
            state, failure = told, FailureKind.REAPED
    _free_device_memory(trainer)
    return state, reason, failure


def _keeps_checkpoint(policy: str, state: str) -> bool:
    """Whether a trial that ended `state` stores its best weights under `tracking.checkpoints: policy`."""
    if state == Ended.FAIL or policy == "none":
        return False
    return policy == "all" or state == Ended.COMPLETE


def _free_device_memory(trainer: Trainer | None) -> None:
    if trainer is not None:
        trainer.release()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:
        pass
