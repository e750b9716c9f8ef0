"""One turn of a population member on a worker (population-based training, study.scheduler: pbt).

A member is one Optuna trial that stays RUNNING from its first epoch to its last. A turn trains it from its latest
checkpoint to the next interval boundary; there it ranks itself among the scores the population has reported at
that boundary, copies a top member's checkpoint when it is in the bottom quantile (exploit) and perturbs the
hyperparameters it copied (explore), stores its checkpoint, reports its score, and is paused: the parent hands the
worker the next member (the one furthest behind), often this one again. The worker keeps the member it trained last
in memory (`Held`): handed back the same member, it goes on without reading its checkpoint.

Order at a boundary, so that a member another one ranks is always one it can copy: decide, store the checkpoint,
then report the score. The member's record: its trial's ATTR_PBT_* attributes (core/record_keys.py), its MLflow
run's per-epoch `hparam.<name>` metrics and TAG_PBT_LINEAGE.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.errors import RunFailure
from hpsearch.core.interrupts import GUARD, Interrupted
from hpsearch.core.record_keys import Ended, FailureKind
from hpsearch.core.seeding import trial_seed
from hpsearch.orchestration.builders import build_trainer, hparams_for, run_params
from hpsearch.orchestration.events import EpochEnded, MemberPaused, TrialEnded, TrialStarted, WorkerFatal
from hpsearch.orchestration.objective import TrialContext, TrialOutcome, _close_trial, _describe_oom, _is_oom
from hpsearch.orchestration.paused_members import PausedMembers
from hpsearch.search import pbt, trial_access
from hpsearch.search.suggest import suggest
from hpsearch.spec.spec_types import Spec
from hpsearch.storage.stores import study_dir
from hpsearch.tracking.study_runs import TrialRun

if TYPE_CHECKING:
    from hpsearch.engine.train import EpochStats, Trainer

PAUSED = "PAUSED"  # a turn's outcome when the member goes on later


@dataclass
class Held:
    """The member a worker trained last, kept in memory between turns."""

    trial_id: int
    epoch: int
    trainer: Trainer
    run: TrialRun
    schedule: list[dict[str, Any]]
    lineage: list[dict[str, Any]] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)  # epochs whose score Optuna has (trained again: not twice)

    def release(self) -> None:
        self.trainer.release()


def checkpoints(spec: Spec) -> PausedMembers:
    """Where the study's paused members wait: studies/<study>/pbt/, within the scheduler's budget."""
    scheduler = spec.study.scheduler
    assert scheduler is not None, "only a population-based study has members"
    return PausedMembers(study_dir(spec.study.name, "pbt"), scheduler.checkpoint_budget_mb * 1024 * 1024)


def members(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(record_keys.ATTR_PBT_MEMBER)]


def reached(spec: Spec, population: list[FrozenTrial]) -> tuple[dict[int, int], frozenset[int]]:
    """({member: the epoch its checkpoint holds}, the members finished or failed), for the clean-up of
    checkpoints; members not yet started stand at 0 (key -1)."""
    out = {t.number: int(t.user_attrs.get(record_keys.ATTR_PBT_EPOCH, 0)) for t in population}
    assert spec.study.scheduler is not None
    if len(population) < spec.study.scheduler.population:
        out[-1] = 0
    return out, frozenset(t.number for t in population if t.state.is_finished())


def run_member_turn(context: TrialContext, trial_id: int, held: Held | None) -> tuple[TrialOutcome, Held | None]:
    """Train member `trial_id` to its next boundary (or its end); returns the outcome and what the worker holds."""
    from hpsearch.engine.train import NonFiniteLoss

    spec, study = context.spec, context.study
    trial = trial_access.open_trial(study, trial_id)
    frozen = trial_access.get_trial(study, trial_id)
    number = trial.number
    epoch = int(frozen.user_attrs.get(record_keys.ATTR_PBT_EPOCH, 0))
    # Held in memory only while it is what the checkpoint holds: another worker may have trained the member since
    # (and died past the checkpoint: the file is taken up then, which counts the epochs trained again).
    if held is not None and (held.trial_id != trial_id or held.epoch != epoch
                             or max(frozen.intermediate_values, default=0) > epoch):
        held.release()  # its checkpoint is on disk: nothing is lost
        held = None
    folder = checkpoints(spec)
    state: str = Ended.FAIL
    reason, failure = None, FailureKind.ERROR
    member = held
    try:
        if member is None:
            member = _take_up(context, trial, frozen, epoch, folder)
        member = _train_turn(context, trial, member, folder)
        if member is not None:
            return TrialOutcome(number, PAUSED, None), member
        return TrialOutcome(number, Ended.COMPLETE, None), None  # told and closed by _train_turn
    except NonFiniteLoss as exc:
        reason, failure = str(exc), FailureKind.NONFINITE
    except Interrupted:
        _pause_record(study, trial_id)  # what it trained since its checkpoint is trained again later
        raise
    except RunFailure as exc:  # over the checkpoint budget, a checkpoint on another machine: nothing is lost
        _pause_record(study, trial_id)
        context.on_event(WorkerFatal(str(exc)))
        return TrialOutcome(number, PAUSED, None), None
    except Exception as exc:  # any failure ends this member, never the worker
        if member is not None and _is_oom(exc):
            reason, failure = _describe_oom(member.trainer.hp, spec, exc), FailureKind.OOM
        else:
            reason = f"{type(exc).__name__}: {exc}"
    # The member failed: it leaves the population (its checkpoints go with the next clean-up).
    with GUARD.critical_section():
        state, reason, failure = _close_trial(context, trial, member.run if member else None,
                                              member.trainer if member else None, Ended.FAIL, None, reason, failure)
    context.on_event(TrialEnded(number, state, None, reason, failure))
    if GUARD.pending:
        raise Interrupted()
    return TrialOutcome(number, state, None, reason), None


def _pause_record(study: optuna.Study, trial_id: int) -> None:
    """No worker holds the member now: any run may take it up from its latest checkpoint."""
    with GUARD.critical_section(), contextlib.suppress(RuntimeError, ValueError):  # it ended meanwhile
        trial_access.set_trial_attr(study, trial_id, record_keys.ATTR_PBT_PAUSED, True)


def _take_up(context: TrialContext, trial: optuna.Trial, frozen: FrozenTrial, epoch: int,
             folder: PausedMembers) -> Held:
    """Build the member's trainer: fresh at its first turn, else from its checkpoint at `epoch`."""
    from hpsearch.engine import pause

    spec, number = context.spec, trial.number
    searched = suggest(trial, spec.search_space, spec.train)  # a member's first draw; the same values again later
    hp = hparams_for(spec, searched)
    run_id = frozen.user_attrs.get(record_keys.ATTR_RUN_ID)
    if run_id is None:
        params = run_params(spec, hp, context.device)
        run = TrialRun.start(context.client, context.experiment_id, context.parent_run_id, spec.study.name, number,
                             params)
        trial.set_user_attr(record_keys.ATTR_RUN_ID, run.run_id)
        trial.set_user_attr(record_keys.ATTR_START_WEIGHTS, params["start_weights"])
        context.on_event(TrialStarted(number, hp.epochs, searched))
    else:
        run = TrialRun.reopen(context.client, run_id, number)
    trainer, _ = build_trainer(spec, hp, context.device, trial_seed(spec.study.seed, number))
    schedule = [{"epoch": 1, "params": dict(searched)}]
    lineage = list(frozen.user_attrs.get(record_keys.ATTR_PBT_LINEAGE, []))
    if epoch > 0:
        path = folder.path(number, epoch)
        if not path.exists():
            raise RunFailure(f"trial {number}: its checkpoint {path} is not on this machine; a population shared "
                             "by machines needs their studies/ folder shared (it resumes where the file is)")
        saved = folder.load(number, epoch)
        pause.resume(trainer, saved)
        schedule = saved["pbt"]["schedule"]
        thrown_away = max(frozen.intermediate_values, default=0) - epoch
        if thrown_away > 0:  # its worker died after epochs its checkpoint does not hold: trained again, said so
            retried = int(frozen.user_attrs.get(record_keys.ATTR_PBT_RETRIED, 0)) + thrown_away
            trial.set_user_attr(record_keys.ATTR_PBT_RETRIED, retried)
            run.set_tags({record_keys.TAG_PBT_RETRIED: str(retried)})
    trial.set_user_attr(record_keys.ATTR_WORKER_PID, os.getpid())
    return Held(trial_access.trial_id(trial), epoch, trainer, run, schedule, lineage,
                set(frozen.intermediate_values))


def _train_turn(context: TrialContext, trial: optuna.Trial, member: Held, folder: PausedMembers) -> Held | None:
    """Train to the next boundary and pause there (returns the member), or to the end and finish (None)."""
    spec = context.spec
    scheduler = spec.study.scheduler
    assert scheduler is not None
    trainer = member.trainer
    epochs = trainer.hp.epochs
    boundary = min(epochs, (member.epoch // scheduler.interval + 1) * scheduler.interval)
    trainer.fit(_epoch_hook(context, trial, member, boundary), until_epoch=boundary)
    member.epoch = len(trainer.history)
    if member.epoch >= epochs or trainer.stopped_early:
        _finish(context, trial, member, folder)
        return None
    _boundary(context, trial, member, folder)
    return member


def _epoch_hook(context: TrialContext, trial: optuna.Trial, member: Held, boundary: int
                ) -> Callable[[EpochStats], None]:
    """Per epoch: its metrics and the hyperparameters it trained with to MLflow, its score to Optuna (at the
    boundary only after its checkpoint is stored: see _boundary), the live view told."""
    metric = context.spec.study.metric
    searched = list(member.schedule[0]["params"])

    def on_epoch(stats: EpochStats) -> None:
        metrics = stats.as_dict()
        hp = member.trainer.hp
        member.run.log_epoch(stats.epoch, {**metrics, **{f"hparam.{k}": float(getattr(hp, k)) for k in searched}})
        if (stats.epoch != boundary or stats.epoch == hp.epochs) and stats.epoch not in member.reported:
            trial.report(metrics[metric], stats.epoch)
            member.reported.add(stats.epoch)
        context.on_event(EpochEnded(trial.number, stats.epoch, hp.epochs, metrics))

    return on_epoch


def _boundary(context: TrialContext, trial: optuna.Trial, member: Held, folder: PausedMembers) -> None:
    """Exploit and explore at the boundary `member.epoch`, store the checkpoint, report the score, pause."""
    from hpsearch.engine import mutate, pause

    spec, study = context.spec, context.study
    scheduler = spec.study.scheduler
    assert scheduler is not None
    trainer, epoch, number = member.trainer, member.epoch, trial.number
    score = trainer.history[-1].as_dict()[spec.study.metric]
    population = members(study)
    # Ranked among the members that reported here (each has stored its checkpoint first); itself included.
    scores = {t.number: t.intermediate_values[epoch] for t in population
              if t.number != number and epoch in t.intermediate_values and t.state != TrialState.FAIL
              and folder.path(t.number, epoch).exists()}
    scores[number] = score
    rng = random.Random(f"{spec.study.seed}-{number}-{epoch}")  # the same decision if the turn is trained again
    donor = pbt.donor(number, scores, scheduler.quantile, spec.study.direction == "maximize", rng)
    exploit = None
    if donor is not None:
        copied = folder.load(donor, epoch)
        pause.adopt(trainer, copied)
        # Its weights descend from the donor now: so do its best epoch so far and its schedule.
        trainer.best_epoch, trainer.best_value = copied["best_epoch"], copied["best_value"]
        best = copied["best_state_dict"]
        trainer.best_state_dict = None if best is None else {k: v.to(trainer.device) for k, v in best.items()}
        trainer._best_cpu = best
        searched = list(member.schedule[0]["params"])
        params = pbt.explore({k: copied["hparams"][k] for k in searched}, scheduler.perturb, spec.search_space,
                             scheduler.resample_probability, rng)
        mutate.change_hparams(trainer, params)
        member.schedule = [e for e in copied["pbt"]["schedule"] if e["epoch"] <= epoch]
        member.schedule.append({"epoch": epoch + 1, "params": params})
        exploit = {"epoch": epoch, "from_trial": donor, "params": params}
        member.lineage.append(exploit)
    state = pause.pause(trainer) | {"pbt": {"schedule": member.schedule}}
    with GUARD.critical_section():  # a stop request waits until the member's record is whole
        at, finished = reached(spec, population)
        folder.keep(number, epoch, state, at | {number: epoch}, finished)
        trial.set_user_attr(record_keys.ATTR_PBT_EPOCH, epoch)
        trial.set_user_attr(record_keys.ATTR_PBT_SCHEDULE, member.schedule)
        if exploit is not None:
            trial.set_user_attr(record_keys.ATTR_PBT_LINEAGE, member.lineage)
            member.run.set_tags({record_keys.TAG_PBT_LINEAGE: json.dumps(member.lineage)})
        if epoch not in member.reported:
            trial.report(score, epoch)
            member.reported.add(epoch)
        trial.set_user_attr(record_keys.ATTR_PBT_PAUSED, True)
    context.on_event(MemberPaused(number, epoch, trainer.hp.epochs, donor))
    if GUARD.pending:
        raise Interrupted()


def _finish(context: TrialContext, trial: optuna.Trial, member: Held, folder: PausedMembers) -> None:
    """The member's last epoch is trained: tell it COMPLETE with its best score, close its run, free its files."""
    spec, trainer = context.spec, member.trainer
    with GUARD.critical_section():
        trial.set_user_attr(record_keys.ATTR_PBT_EPOCH, member.epoch)
        trial.set_user_attr(record_keys.ATTR_PBT_SCHEDULE, member.schedule)
        state, reason, failure = _close_trial(context, trial, member.run, trainer, Ended.COMPLETE,
                                              trainer.best_value, None, FailureKind.ERROR)
        population = members(context.study)
        at, finished = reached(spec, population)
        folder.release(at, finished | {trial.number})
    context.on_event(TrialEnded(trial.number, state, trainer.best_value, reason,
                                failure if state == Ended.FAIL else None))
    if GUARD.pending:
        raise Interrupted()
