"""`hpsearch run`: create or resume the study, repair what a dead run left, run the budget, close up."""

from __future__ import annotations

import click
from optuna.trial import TrialState

from hpsearch import records, tracking
from hpsearch import study as study_mod
from hpsearch.credentials import mask_url, masked_spec
from hpsearch.devices import plan_slots
from hpsearch.live import LiveView
from hpsearch.registry import build_pruner, build_sampler
from hpsearch.spec import Spec
from hpsearch.workers import Orchestrator, RunSummary, reap_and_close


def run_study(spec: Spec, interactive: bool | None = None) -> RunSummary:
    slots = plan_slots(spec.resources.devices, spec.resources.trials_per_device)  # refuse bad devices first
    storage_url = spec.study.storage
    # The parent's sampler acts when the parent asks for a trial (grid assigns its grid point then);
    # the values are sampled in the workers, each with its own sampler.
    sampler = build_sampler(spec.study.sampler, spec.search_space)
    # The study keeps the spec and the tracking URI for `status`/`best`/export: with passwords masked
    # (the real URLs are passed on separately, and come back from the options or the environment).
    study, resumed = study_mod.create_or_resume(masked_spec(spec), sampler, build_pruner(spec.study.pruner),
                                                storage_url)
    study.set_user_attr(records.STUDY_TRACKING_URI, mask_url(spec.tracking.uri))

    # Trials a dead run left RUNNING on this host, and trials killed or interrupted last time:
    # fail what is still open, then retry each once with the same parameters.
    reaped = reap_and_close(study, spec.tracking.uri)
    retried = [t.number for t in study_mod.retry_candidates(study) if study_mod.enqueue_retry(study, t)]

    counts = study_mod.count_states(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    n = spec.study.n_trials
    where = study_mod.storage_label(storage_url)
    if resumed:
        click.echo(
            f"resuming study {spec.study.name!r} ({where}): {finished}/{n} finished, "
            f"{counts[TrialState.FAIL]} failed" + (f"; reaped {len(reaped)} orphaned trial(s)" if reaped else "")
            + (f"; retrying trial(s) {', '.join(map(str, retried))}" if retried else "")
        )
    else:
        click.echo(f"created study {spec.study.name!r} ({where}), budget {n} finished trials")

    study_tracker = tracking.StudyTracker(spec.tracking.uri, spec.tracking.experiment)
    with study_mod.budget_lock(storage_url, spec.study.name):  # one parent run even when runs start together
        parent_run_id = study_tracker.parent_run(spec.study.name, _parent_params(spec))
    study_mod.remember_last_run(
        study_mod.LastRun(spec.study.name, mask_url(storage_url), mask_url(spec.tracking.uri) or "", spec.source)
    )

    live = LiveView(spec.study.metric, spec.study.direction, n)
    if interactive is not None:
        live.interactive = interactive
    best_value = best_trial = None
    if counts[TrialState.COMPLETE]:
        best_value, best_trial = study.best_trial.value, study.best_trial.number
    if finished < n:
        click.echo(
            f"running {n - finished} more trial(s) on {len(slots)} slot(s): "
            + ", ".join(sorted({s.label for s in slots}))
            + f"; MLflow: {mask_url(spec.tracking.uri)} (experiment {spec.tracking.experiment!r})"
        )
    live.start({s.name: c for s, c in counts.items()}, best_value, best_trial)
    orchestrator = Orchestrator(
        spec, study, slots, storage_url, spec.tracking.uri, study_tracker.experiment_id, parent_run_id, live
    )
    try:
        summary = orchestrator.run(spec.study.timeout)
    finally:
        live.close()
        # A worker killed while closing a finished trial's run leaves it RUNNING: close it now.
        states = {t.number: t.state.name for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        tracking.close_stale_runs(spec.tracking.uri, study_tracker.experiment_id, states)
        best = {}
        if study_mod.count_states(study)[TrialState.COMPLETE]:
            best = {f"best_{spec.study.metric}": study.best_trial.value}
        study_tracker.close_parent(parent_run_id, best)

    tail = ""
    if summary.best_trial is not None:
        tail = f"; best {spec.study.metric}={summary.best_value:.4f} (trial {summary.best_trial})"
    click.echo(
        f"study {spec.study.name!r}: {summary.finished}/{n} finished ({summary.complete} complete, "
        f"{summary.pruned} pruned), {summary.failed} failed, {summary.seconds:.1f}s{tail}"
        + ("; stopped by --timeout" if summary.timed_out else "")
    )
    if summary.checkpoints_lost:
        click.echo(checkpoints_lost_line(summary.checkpoints_lost))
    return summary


def checkpoints_lost_line(trials: list[int]) -> str:
    """The run summary's warning for checkpoints that could not be stored."""
    return (
        f"WARNING: {len(trials)} checkpoint(s) not stored (trial(s) {', '.join(map(str, trials))}); "
        f"each run's MLflow tag {records.TAG_CHECKPOINT_ERROR} says why"
    )


def _parent_params(spec: Spec) -> dict[str, object]:
    return {
        "model": spec.task.model.name,
        "weights": spec.task.model.weights,
        "dataset": spec.task.data.name,
        "metric": spec.study.metric,
        "direction": spec.study.direction,
        "n_trials": spec.study.n_trials,
        "sampler": spec.study.sampler.name,
        "pruner": spec.study.pruner.name,
        "search_space": ",".join(spec.search_space),
    }
