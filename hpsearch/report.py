"""Reading a study back: the trials table for `status` and the best-trial record for `best`."""

from __future__ import annotations

import math
from typing import Any

import optuna

from hpsearch import records, tracking
from hpsearch import study as study_mod
from hpsearch.credentials import mask_url, redact
from hpsearch.errors import UsageError


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
    if run_id:
        checkpoint = tracking.checkpoint_uri(tracking.client_for(tracking_uri), run_id)
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
        "finished_trials": sum(1 for t in study.get_trials(deepcopy=False) if t.state in study_mod.FINISHED),
    }
