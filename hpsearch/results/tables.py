"""Reading a study back: the trials table for `status` and the best-trial record for `best`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import pandas as pd

from hpsearch.core import record_keys
from hpsearch.core.credentials import mask_url, redact
from hpsearch.core.errors import UsageError
from hpsearch.core.outages import first_line
from hpsearch.core.record_keys import Ended
from hpsearch.search import trial_states
from hpsearch.storage import stores
from hpsearch.tracking import background_writer, checkpoints, mlflow_client

# What `status` reads from `study.trials_dataframe()`: its columns are (attribute, key) pairs.
FRAME_ATTRS = ("number", "state", "value", "intermediate_values", "datetime_start", "datetime_complete",
               "params", "distributions", "user_attrs")
COLUMNS = ["number", "state", "value", "epochs_run", "duration_s", "params", "mlflow_run_id", "reason"]
# A multi-objective study's rows: `value` is the first objective's, `values` all of them by metric name, and
# `pareto` whether the trial is on the front.
MULTI_COLUMNS = ["number", "state", "value", "values", "pareto", "epochs_run", "duration_s", "params",
                 "mlflow_run_id", "reason"]


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives by metric: Optuna's metric names, else the one recorded metric, else value(s)."""
    if study.metric_names:
        return list(study.metric_names)
    if len(study.directions) == 1:
        return [study.user_attrs.get(record_keys.STUDY_METRIC) or "value"]
    return [f"values_{i}" for i in range(len(study.directions))]


def trials_frame(study: optuna.Study, sort: str = "number", top: int | None = None) -> pd.DataFrame:
    """`status`'s table: one row per trial (COLUMNS; `params` holds each trial's dict), missing values NaN.

    `sort="value"` puts the best value first in the study's direction, trials without one last;
    `top` keeps the first rows after sorting.
    """
    multi = len(study.directions) > 1
    columns = MULTI_COLUMNS if multi else COLUMNS
    raw = study.trials_dataframe(attrs=FRAME_ATTRS, multi_index=True)
    if raw.empty:
        return pd.DataFrame(columns=columns)
    # What the frame cannot tell apart, from the trials: a NaN report from no report (both NaN there), and
    # a trial's own parameters in the order it suggested them (the frame sorts them by name).
    shape = {t.number: (list(t.params), max(t.intermediate_values, default=None), len(t.intermediate_values))
             for t in study.get_trials(deepcopy=False)}
    if multi:  # Optuna names the column group "values", one column per objective
        values = raw.xs("values", axis=1, level=0).astype(float)
        values.columns = objective_names(study)
        front = {t.number for t in trial_states.pareto_front(study)}
    else:  # its key is the metric's name where one is set
        values = raw.xs("value", axis=1, level=0).iloc[:, :1].astype(float)
    rows = []
    for (_, row), (_, value_row) in zip(raw.iterrows(), values.iterrows(), strict=True):
        number = int(row[("number", "")])
        out = _frame_row(row, float(value_row.iloc[0]), *shape.get(number, ([], None, 0)))
        if multi:
            out["values"] = {k: None if pd.isna(v) else float(v) for k, v in value_row.items()}
            out["pareto"] = number in front
        rows.append(out)
    frame = pd.DataFrame(rows, columns=columns)
    if sort == "value" and multi:  # the front first, then the first objective
        minimize = study.directions[0] == optuna.study.StudyDirection.MINIMIZE
        frame = frame.sort_values(["pareto", "value"], ascending=[False, minimize], na_position="last", kind="stable")
    elif sort == "value":
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        frame = frame.sort_values("value", ascending=minimize, na_position="last", kind="stable")
    return frame.head(top) if top is not None else frame


def _frame_row(row: pd.Series, value: float, names: list[str], last_step: int | None, reports: int
               ) -> dict[str, Any]:
    # A pruned or running trial: its last reported value; a failed one has none (its last epoch is no result).
    if pd.isna(value) and last_step is not None and row[("state", "")] != Ended.FAIL:
        value = row.get(("intermediate_values", last_step), math.nan)
    start, end = row[("datetime_start", "")], row[("datetime_complete", "")]
    run_id = row.get(("user_attrs", record_keys.ATTR_RUN_ID), math.nan)
    epochs = row.get(("user_attrs", record_keys.ATTR_EPOCHS), math.nan)  # a multi-objective trial's, unreported
    reason = row.get(("user_attrs", record_keys.ATTR_FAIL_REASON), math.nan)
    return {
        "number": int(row[("number", "")]),
        "state": row[("state", "")],
        "value": float(value) if math.isfinite(value) else math.nan,
        "epochs_run": reports or (0 if pd.isna(epochs) else int(epochs)),
        "duration_s": math.nan if pd.isna(start) or pd.isna(end) else round((end - start).total_seconds(), 2),
        "params": {name: _param(row, name) for name in names if ("params", name) in row.index},
        "mlflow_run_id": None if pd.isna(run_id) else run_id,
        "reason": None if pd.isna(reason) else redact(reason) or None,  # older studies
    }


def _param(row: pd.Series, name: str) -> Any:
    dist, value = row[("distributions", name)], row[("params", name)]
    if pd.api.types.is_scalar(value) and pd.isna(value):  # a None (or NaN) choice
        return None
    # A column that mixes ints with missing values holds floats: the trial's distribution gives the value
    # back as it was suggested (an int, a categorical choice).
    value = dist.to_external_repr(dist.to_internal_repr(value))
    return value.item() if isinstance(value, np.generic) else value


def _native(value: Any) -> Any:
    return None if pd.api.types.is_scalar(value) and pd.isna(value) else value


def trial_rows(study: optuna.Study, sort: str = "number", top: int | None = None) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, duration, params, run id, failure reason (None when missing)."""
    return [{k: _native(v) for k, v in r.items()} for r in trials_frame(study, sort, top).to_dict("records")]


def flat_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with each parameter in its own `params.NAME` column (CSV and tables)."""
    names: list[str] = []
    for r in sorted(rows, key=lambda r: r["number"]):  # the same columns in the same order, however sorted
        names += [k for k in r["params"] if k not in names]
    out = []
    for r in rows:
        flat = {k: v for k, v in r.items() if k not in ("params", "values")}
        if "values" in r:  # a multi-objective study: each objective its own column, in place of `value`
            del flat["value"]
            flat = {"number": flat.pop("number"), "state": flat.pop("state"), **r["values"], **flat}
        flat.update({f"params.{n}": r["params"].get(n) for n in names})
        out.append(flat)
    return out


def best_record(study: optuna.Study, storage_url: str | None, tracking_uri: str) -> dict[str, Any]:
    """`best`'s record of a single-objective study's winner (trial_record's fields)."""
    _completed(study)
    return trial_record(study, study.best_trial, storage_url, tracking_uri)


def pareto_record(study: optuna.Study, storage_url: str | None, tracking_uri: str) -> dict[str, Any]:
    """`best`'s record of a multi-objective study: its objectives and the Pareto front, trial by trial."""
    _completed(study)
    names = objective_names(study)
    return {
        **_study_fields(study, storage_url, tracking_uri),
        "objectives": [{"metric": n, "direction": d.name.lower()}
                       for n, d in zip(names, study.directions, strict=True)],
        "pareto": [{"number": t.number, "values": dict(zip(names, t.values, strict=True)), "params": dict(t.params),
                    "mlflow_run_id": t.user_attrs.get(record_keys.ATTR_RUN_ID)}
                   for t in trial_states.pareto_front(study)],
    }


def trial_record(study: optuna.Study, trial: optuna.trial.FrozenTrial | int, storage_url: str | None,
                 tracking_uri: str) -> dict[str, Any]:
    """One complete trial as `best` prints and exports it: value(s), params, MLflow run, where its checkpoint is.
    `trial` may be a number (`best --trial N`): refused unless the study has it, COMPLETE."""
    if isinstance(trial, int):
        trial = _complete_trial(study, trial)
    run_id = trial.user_attrs.get(record_keys.ATTR_RUN_ID)
    checkpoint = None
    client = None
    if run_id:
        client = mlflow_client.client_for(tracking_uri)
        checkpoint = checkpoints.checkpoint_uri(client, run_id)
    kept = background_writer.undelivered_checkpoint(run_id) if run_id and not checkpoint else None
    kept = kept.resolve() if kept is not None and kept.is_file() else None
    names = objective_names(study)
    return {
        **_study_fields(study, storage_url, tracking_uri),
        "metric": names[0] if len(names) > 1 else study.user_attrs.get(record_keys.STUDY_METRIC),
        "direction": study.directions[0].name.lower(),
        "trial_number": trial.number,
        "value": trial.values[0],
        **({"values": dict(zip(names, trial.values, strict=True))} if len(names) > 1 else {}),
        "params": dict(trial.params),
        "mlflow_run_id": run_id,
        "checkpoint": mask_url(checkpoint),
        "checkpoint_local": str(kept) if kept else None,  # kept here when it could not be delivered
        "checkpoint_note": None if checkpoint else _missing_checkpoint(study, trial, client, run_id, kept),
    }


def _study_fields(study: optuna.Study, storage_url: str | None, tracking_uri: str) -> dict[str, Any]:
    return {
        "study_name": study.study_name,
        "storage": stores.storage_label(storage_url),
        "tracking_uri": mask_url(tracking_uri),  # the record is printed and exported
        "finished_trials": sum(1 for t in study.get_trials(deepcopy=False) if t.state in trial_states.FINISHED),
    }


def _completed(study: optuna.Study) -> None:
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UsageError(f"study {study.study_name!r} has no completed trial yet")


def _complete_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise UsageError(f"--trial: study {study.study_name!r} has no trial {number} (trials 0 to {len(trials) - 1})"
                         if trials else f"--trial: study {study.study_name!r} has no trials yet")
    if found.state != optuna.trial.TrialState.COMPLETE:
        raise UsageError(f"--trial: trial {number} of study {study.study_name!r} is {found.state.name}, not COMPLETE: "
                         "it has no final value or checkpoint to hand back")
    return found


def _missing_checkpoint(study: optuna.Study, trial: optuna.trial.FrozenTrial, client: Any, run_id: str | None,
                        kept: Any) -> str:
    """Why the tracking store holds no checkpoint for `trial`, in words (never a guess when we know)."""
    number = trial.number
    if not run_id:
        return f"trial {number} has no MLflow run"
    error = None
    try:
        error = client.get_run(run_id).data.tags.get(record_keys.TAG_CHECKPOINT_ERROR)
    except Exception as exc:  # the store itself may be away: say so rather than guess
        if not kept:
            return f"the tracking store could not be asked about trial {number}'s checkpoint ({first_line(exc)})"
    if kept:
        why = f": {redact(error)}" if error else ""
        return f"trial {number}'s checkpoint never reached the tracking store{why}; a copy is kept at {kept}"
    if error:
        return f"trial {number}'s checkpoint could not be stored: {redact(error)}"
    undelivered = [item for item in study.user_attrs.get(record_keys.STUDY_UNDELIVERED) or []
                   if item.startswith(f"trial {number}'s checkpoint")]
    if undelivered:
        return f"trial {number}'s checkpoint was not delivered when its run ended: {undelivered[0]}"
    if trial.user_attrs.get(record_keys.ATTR_CHECKPOINT_PENDING):
        return (f"trial {number}'s checkpoint is pending: it was being written when the trial was told, and the "
                "tracking store does not have it (still being written, or its worker ended first)")
    return f"trial {number} logged no checkpoint (tracking.checkpoints is 'none' in its space file)"
