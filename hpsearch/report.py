"""Reading a study back: the trials table for `status` and the best-trial record for `best`."""

from __future__ import annotations

import math
from typing import Any

import optuna

from hpsearch import records, tracking
from hpsearch import study as study_mod
from hpsearch.credentials import mask_url, redact
from hpsearch.errors import UsageError
from hpsearch.outages import first_line


def _duration(t: optuna.trial.FrozenTrial) -> float | None:
    if t.datetime_start and t.datetime_complete:
        return round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
    return None


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, duration, params, run id, failure reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.intermediate_values:  # a pruned trial: its last reported value
            value = t.intermediate_values[max(t.intermediate_values)]
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": None if value is None or not math.isfinite(value) else value,
                "epochs_run": len(t.intermediate_values),
                "duration_s": _duration(t),
                "params": dict(t.params),
                "mlflow_run_id": t.user_attrs.get(records.ATTR_RUN_ID),
                "reason": redact(t.user_attrs.get(records.ATTR_FAIL_REASON) or "") or None,  # older studies
            }
        )
    return rows


def flat_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with each parameter in its own `params.NAME` column (CSV and tables)."""
    names: list[str] = []
    for r in rows:
        names += [k for k in r["params"] if k not in names]
    out = []
    for r in rows:
        flat = {k: v for k, v in r.items() if k != "params"}
        flat.update({f"params.{n}": r["params"].get(n) for n in names})
        out.append(flat)
    return out


def best_record(study: optuna.Study, storage_url: str | None, tracking_uri: str) -> dict[str, Any]:
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise UsageError(f"study {study.study_name!r} has no completed trial yet")
    best = study.best_trial
    run_id = best.user_attrs.get(records.ATTR_RUN_ID)
    checkpoint = None
    client = None
    if run_id:
        client = tracking.client_for(tracking_uri)
        checkpoint = tracking.checkpoint_uri(client, run_id)
    kept = tracking.undelivered_checkpoint(run_id) if run_id and not checkpoint else None
    kept = kept.resolve() if kept is not None and kept.is_file() else None
    return {
        "study_name": study.study_name,
        "storage": study_mod.storage_label(storage_url),
        "tracking_uri": mask_url(tracking_uri),  # the record is printed and exported
        "metric": study.user_attrs.get(records.STUDY_METRIC),
        "direction": study.direction.name.lower(),
        "trial_number": best.number,
        "value": best.value,
        "params": dict(best.params),
        "mlflow_run_id": run_id,
        "checkpoint": mask_url(checkpoint),
        "checkpoint_local": str(kept) if kept else None,  # kept here when it could not be delivered
        "checkpoint_note": None if checkpoint else _missing_checkpoint(study, best, client, run_id, kept),
        "finished_trials": sum(1 for t in study.get_trials(deepcopy=False) if t.state in study_mod.FINISHED),
    }


def _missing_checkpoint(study: optuna.Study, trial: optuna.trial.FrozenTrial, client: Any, run_id: str | None,
                        kept: Any) -> str:
    """Why the tracking store holds no checkpoint for `trial`, in words (never a guess when we know)."""
    number = trial.number
    if not run_id:
        return f"trial {number} has no MLflow run"
    error = None
    try:
        error = client.get_run(run_id).data.tags.get(records.TAG_CHECKPOINT_ERROR)
    except Exception as exc:  # the store itself may be away: say so rather than guess
        if not kept:
            return f"the tracking store could not be asked about trial {number}'s checkpoint ({first_line(exc)})"
    if kept:
        why = f": {redact(error)}" if error else ""
        return f"trial {number}'s checkpoint never reached the tracking store{why}; a copy is kept at {kept}"
    if error:
        return f"trial {number}'s checkpoint could not be stored: {redact(error)}"
    undelivered = [item for item in study.user_attrs.get(records.STUDY_UNDELIVERED) or []
                   if item.startswith(f"trial {number}'s checkpoint")]
    if undelivered:
        return f"trial {number}'s checkpoint was not delivered when its run ended: {undelivered[0]}"
    if trial.user_attrs.get(records.ATTR_CHECKPOINT_PENDING):
        return (f"trial {number}'s checkpoint is pending: it was being written when the trial was told, and the "
                "tracking store does not have it (still being written, or its worker ended first)")
    return f"trial {number} logged no checkpoint (tracking.checkpoints is 'none' in its space file)"
