"""`hpsearch run`: create or resume the study, repair what a dead run left, run the budget, close up.

What it says goes through a Progress (the command line's live view); what it publishes when the budget is done (the
HTML report, the parent run's story) is the caller's `publish`: orchestration knows neither click nor the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.credentials import mask_url, redact
from hpsearch.core.errors import RunFailure
from hpsearch.core.outages import GaveUp, first_line, short_reason
from hpsearch.orchestration.devices import plan_slots
from hpsearch.orchestration.orchestrator import Orchestrator, RunSummary, reap_and_close
from hpsearch.orchestration.population import PopulationOrchestrator
from hpsearch.orchestration.progress import Progress
from hpsearch.orchestration.queued import QueuedTrialsOrchestrator
from hpsearch.search import trial_states
from hpsearch.search.samplers import build_pruner, study_sampler
from hpsearch.spec.redaction import masked_spec
from hpsearch.spec.spec_types import Spec
from hpsearch.storage import last_run, locks, retries, stores
from hpsearch.tracking import background_writer, mlflow_client, study_runs

# After a run that finished its budget: (spec, study, tracker, parent run id, where to say things).
Publisher = Callable[[Spec, optuna.Study, study_runs.StudyTracker, str, Callable[[str, bool], None]], None]


def run_study(spec: Spec, progress: Progress, publish: Publisher | None = None, queued_only: bool = False
              ) -> RunSummary:
    """Run what the study's budget lacks. `queued_only`: run the trials enqueued in it and sample none (a
    confirmation's retrainings); the study is then not remembered as this folder's last run."""
    slots = plan_slots(spec.resources.devices, spec.resources.trials_per_device)  # refuse bad devices first
    storage_url = spec.study.storage
    study, resumed, reaped, retried = _open_study(spec)
    counts = trial_states.count_states(study)
    finished = trial_states.finished_count(counts)
    n = spec.study.n_trials
    # Never more worker processes than trials left (each imports torch and holds its own data and model).
    slots = plan_slots(spec.resources.devices, spec.resources.trials_per_device, trials_left=n - finished)
    where = stores.storage_label(storage_url)
    if resumed:
        progress.say(
            f"resuming study {spec.study.name!r} ({where}): {finished}/{n} finished, "
            f"{counts[TrialState.FAIL]} failed" + (f"; reaped {len(reaped)} orphaned trial(s)" if reaped else "")
            + (f"; retrying trial(s) {', '.join(map(str, retried))}" if retried else "")
            + _waiting_members(study)
        )
    else:
        progress.say(f"created study {spec.study.name!r} ({where}), budget {n} finished trials")

    try:  # waits through an outage of the tracking store, saying so, up to HPSEARCH_OUTAGE_SECONDS
        study_tracker = study_runs.StudyTracker(spec.tracking.uri, spec.tracking.experiment)
        with locks.budget_lock(storage_url, spec.study.name):  # one parent run even when runs start together
            parent_run_id = study_tracker.parent_run(spec.study.name, _parent_params(spec))
    except GaveUp as exc:
        raise RunFailure(f"MLflow tracking store {mask_url(spec.tracking.uri)}: {exc}") from exc
    if not queued_only:  # `best`, `status` and `report` without SPACE go on reading the search
        last_run.remember_last_run(
            last_run.LastRun(spec.study.name, mask_url(storage_url), mask_url(spec.tracking.uri) or "", spec.source)
        )

    live = progress
    best_value = best_trial = None
    if counts[TrialState.COMPLETE] and not spec.study.multi:
        best_value, best_trial = study.best_trial.value, study.best_trial.number
    if finished < n:
        progress.say(
            f"running {n - finished} more trial(s) on {len(slots)} slot(s): "
            + ", ".join(sorted({s.label for s in slots}))
            + f"; MLflow: {mask_url(spec.tracking.uri)} (experiment {spec.tracking.experiment!r})"
        )
    live.start({s.name: c for s, c in counts.items()}, best_value, best_trial)
    kind = (QueuedTrialsOrchestrator if queued_only else Orchestrator if spec.study.scheduler is None
            else PopulationOrchestrator)
    orchestrator = kind(
        spec, study, slots, storage_url, spec.tracking.uri, study_tracker.experiment_id, parent_run_id, live
    )
    undelivered: list[str] = []
    try:
        summary = orchestrator.run(spec.study.timeout)
    finally:  # also on an error or Ctrl-C: whatever it raised goes on after this
        live.close()
        undelivered = orchestrator.undelivered + _close_tracking(spec, study, study_tracker, parent_run_id, progress)
        if undelivered:
            _report_undelivered(study, undelivered, progress)

    if publish is not None and not summary.interrupted and not undelivered:  # a stopped run is not held up by it
        publish(spec, study, study_tracker, parent_run_id, progress.say)
    progress.say(summary_line(spec, summary))
    if summary.checkpoints_lost:
        progress.say(checkpoints_lost_line(summary.checkpoints_lost))
    if undelivered:
        raise RunFailure(f"{len(undelivered)} MLflow write(s) never reached {mask_url(spec.tracking.uri)} "
                         "(listed above); every trial is in the study, `hpsearch best` says which checkpoint "
                         "is kept where")
    return summary


def _open_study(spec: Spec) -> tuple[optuna.Study, bool, list[FrozenTrial], list[int]]:
    """The study, created or resumed, with what a dead run left behind dealt with: (study, resumed, the trials
    reaped, the trial numbers queued again)."""
    # The parent's sampler acts when the parent asks for a trial (grid assigns its grid point then);
    # the values are sampled in the workers, each with its own sampler.
    sampler = study_sampler(spec.study.sampler, spec.search_space, spec.study.n_trials)
    # The study keeps the spec and the tracking URI for `status`/`best`/export: with passwords masked
    # (the real URLs are passed on separately, and come back from the options or the environment).
    study, resumed = stores.create_or_resume(masked_spec(spec), sampler, build_pruner(spec.study.pruner),
                                             spec.study.storage)
    study.set_user_attr(record_keys.STUDY_TRACKING_URI, mask_url(spec.tracking.uri))

    # Trials a dead run left RUNNING on this host, and trials killed or interrupted last time:
    # fail what is still open, then retry each with the same parameters (storage/retries.py). Under the budget
    # lock, so that two runs starting together never enqueue the same retry twice.
    with locks.budget_lock(spec.study.storage, spec.study.name):
        reaped = reap_and_close(study, spec.tracking.uri)
        retried = [t.number for t in retries.retry_candidates(study) if retries.enqueue_retry(study, t)]
    return study, resumed, reaped, retried


def _waiting_members(study: optuna.Study) -> str:
    """A population-based study's members that go on from their checkpoints, for the resume line."""
    waiting = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get(record_keys.ATTR_PBT_MEMBER)]
    if not waiting:
        return ""
    at = ", ".join(f"{t.number}@{t.user_attrs.get(record_keys.ATTR_PBT_EPOCH, 0)}" for t in waiting)
    return f"; {len(waiting)} population member(s) go on from their checkpoints (trial@epoch: {at})"


def summary_line(spec: Spec, summary: RunSummary) -> str:
    """The run's last line: how many trials finished and how, how long it took, the best so far."""
    tail = ""
    if summary.best_trial is not None:
        tail = f"; best {spec.study.metric}={summary.best_value:.4f} (trial {summary.best_trial})"
    elif summary.pareto_front:
        tail = f"; Pareto front: trial(s) {', '.join(map(str, summary.pareto_front))} (`hpsearch best` shows it)"
    return (
        f"study {spec.study.name!r}: {summary.finished}/{spec.study.n_trials} finished ({summary.complete} complete, "
        f"{summary.pruned} pruned), {summary.failed} failed, {summary.seconds:.1f}s{tail}"
        + ("; stopped by --timeout" if summary.timed_out else "")
    )


def _close_tracking(spec: Spec, study: optuna.Study, tracker: study_runs.StudyTracker, parent_run_id: str,
                    progress: Progress) -> list[str]:
    """Close what the run leaves open in MLflow and deliver this process's queued writes.

    Waits HPSEARCH_DRAIN_SECONDS at most in all, counting down; returns what was not delivered.
    """
    deadline = time.monotonic() + background_writer.drain_seconds()
    lost = []
    # A worker killed while closing a finished trial's run leaves it RUNNING: close it now.
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        mlflow_client.through_outage(
            lambda: study_runs.close_stale_runs(spec.tracking.uri, tracker.experiment_id, states),
            "the close of trial runs left open", wait_for=background_writer.drain_seconds())
    except Exception as exc:
        lost.append(f"the close of trial runs left open, if any ({short_reason(exc)})")
    best: dict[str, float | None] = {}
    if spec.study.multi:
        best = {"pareto_front_size": len(trial_states.pareto_front(study))}
    elif trial_states.count_states(study)[TrialState.COMPLETE]:
        best = {f"best_{spec.study.metric}": study.best_trial.value}
    tracker.close_parent(parent_run_id, best)
    left = background_writer.drain(
        max(0.0, deadline - time.monotonic()),
        on_tick=lambda count, seconds: progress.say(
            f"waiting for {count} MLflow write(s) to reach the tracking store; giving up in {seconds:.0f}s", err=True),
    )
    return lost + [item.describe() for item in left]


def _report_undelivered(study: optuna.Study, undelivered: list[str], progress: Progress) -> None:
    """Name every write that never reached MLflow, on screen and in the study (read by `best`)."""
    progress.say(f"ERROR: {len(undelivered)} MLflow write(s) not delivered:", err=True)
    for item in undelivered:
        progress.say(f"  - {redact(item)}", err=True)
    try:
        study.set_user_attr(record_keys.STUDY_UNDELIVERED, [redact(item) for item in undelivered])
    except Exception as exc:  # the list is on screen; the study's database may be away too
        progress.say(f"  (not recorded in the study either: {first_line(exc)})", err=True)


def checkpoints_lost_line(trials: list[int]) -> str:
    """The run summary's warning for checkpoints that could not be stored."""
    return (
        f"WARNING: {len(trials)} checkpoint(s) not stored (trial(s) {', '.join(map(str, trials))}); "
        f"each run's MLflow tag {record_keys.TAG_CHECKPOINT_ERROR} says why, and a copy is kept under "
        f"{background_writer.UNDELIVERED_DIR}/<run id>/ (`hpsearch best` uses it)"
    )


def _parent_params(spec: Spec) -> dict[str, object]:
    from hpsearch.spec.teacher_spec import teacher_params

    # The teacher's identity; an export that does not exist (yet) is refused here, before any trial.
    teacher = {} if spec.task.teacher is None else teacher_params(spec.task.teacher)
    return {
        "model": spec.task.model.name,
        "weights": spec.task.model.weights,
        "dataset": spec.task.data.name,
        "val_fraction": spec.task.data.val_fraction,
        # "official": the dataset's own test split (CIFAR, an image folder's val/ or test/)
        "test_fraction": "official" if spec.task.data.held_out_test is None else spec.task.data.held_out_test,
        "metric": spec.study.metric,
        "direction": spec.study.direction,
        **({"objectives": ",".join(f"{o.metric}:{o.direction}" for o in spec.study.objectives)}
           if spec.study.multi else {}),
        "n_trials": spec.study.n_trials,
        "sampler": spec.study.sampler.name,
        "pruner": spec.study.pruner.name,
        "search_space": ",".join(spec.search_space),
        **teacher,
    }
