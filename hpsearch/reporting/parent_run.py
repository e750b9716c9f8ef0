"""The study's parent MLflow run tells the study's story.

After a search (`hpsearch run`) and on `hpsearch report`, the parent run gets: the report page and its
PNGs and the space file as artifacts; `best_value`, the best value so far, one point per finished trial
stepped by trial number; the trial counts; the winner's hyperparameters as `best.<name>` tags; and a
description (the UI's note) saying how to run the search again. None of it may fail a search: what could
not be done comes back as one sentence, for one warning line.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from hpsearch.core import record_keys
from hpsearch.core.credentials import mask_url, redact
from hpsearch.core.outages import first_line
from hpsearch.reporting.html_report import REPORT_PAGE, Report, RunLinks, write_report
from hpsearch.search import trial_states
from hpsearch.search.trial_states import pareto_front
from hpsearch.spec.redaction import masked_space_file
from hpsearch.tracking import mlflow_client, study_runs

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from hpsearch.spec.spec_types import Spec
    from hpsearch.tracking.study_runs import StudyTracker

BEST_VALUE = "best_value"
COUNT_METRICS = {TrialState.COMPLETE: "trials_complete", TrialState.PRUNED: "trials_pruned",
                 TrialState.FAIL: "trials_failed"}
BEST_TAG_PREFIX = "best."
TAG_BEST_TRIAL = "hpsearch.best_trial"
TAG_PARETO_TRIALS = "hpsearch.pareto_trials"  # a multi-objective study's front: trial numbers, comma-separated
TAG_PARETO_RUNS = "hpsearch.pareto_run_ids"  # and their MLflow runs, in the same order
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
REPORT_ARTIFACTS = "report"
SPACE_ARTIFACTS = "space"
RESOLVED_SPACE = "resolved.yaml"
LOCAL_UI = "http://127.0.0.1:5000"  # where `hpsearch ui` serves a store that has no server of its own
METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


@dataclass(frozen=True)
class ParentRun:
    client: MlflowClient
    experiment_id: str
    run_id: str | None  # None: the experiment holds no parent run for the study


def find_parent(study: optuna.Study, tracking_uri: str) -> ParentRun:
    """The study's experiment and parent run, looked up once (no waiting through an outage)."""
    from hpsearch.results.export import spec_of_study

    experiment = spec_of_study(study).tracking.experiment
    uri = mlflow_client.resolve_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():  # opening creates it
        raise LookupError(f"there is no MLflow store at {uri.removeprefix('sqlite:///')}")
    client = mlflow_client.client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"MLflow at {mask_url(tracking_uri)} has no experiment {experiment!r}")
    return ParentRun(client, found.experiment_id,
                     study_runs.find_parent_run(client, found.experiment_id, study.study_name))


def ui_address(tracking_uri: str) -> str:
    """The MLflow UI that shows this store: its server, or `hpsearch ui` on this machine."""
    if tracking_uri.startswith(("http://", "https://")):
        return (mask_url(tracking_uri) or tracking_uri).rstrip("/")
    return LOCAL_UI


def reproduce_command(study: optuna.Study) -> str:
    """The `hpsearch run` command that runs this search again: same file, name, seed and budget."""
    from hpsearch.results.export import spec_of_study

    spec = spec_of_study(study)
    parts = ["hpsearch", "run", spec.source or "SPACE.yaml", "--study-name", spec.study.name,
             "--seed", str(spec.study.seed), "--n-trials", str(spec.study.n_trials)]
    if spec.study.timeout:
        parts += ["--timeout", f"{spec.study.timeout:g}s"]
    return shlex.join(parts)


def publish(study: optuna.Study, tracking_uri: str, out: Path, parent: ParentRun | None = None
            ) -> tuple[Report, str | None]:
    """Write the report into `out` and tell the parent run; returns the report and why the parent run was not
    told (None when it was). Only writing the report files themselves may raise."""
    try:
        command: str | None = reproduce_command(study)
    except Exception:  # a study not made by hpsearch records no space file: no command to show
        command = None
    problem = None
    if parent is None:
        try:
            parent = find_parent(study, tracking_uri)
        except Exception as exc:
            problem = f"the report is not attached to MLflow: {first_line(exc)}"
    links, note = None, None
    if parent is not None:
        links = RunLinks(ui_address(tracking_uri), parent.experiment_id)
        note = f"Runs open in the MLflow UI at {links.ui}" + (" (`hpsearch ui`)." if links.ui == LOCAL_UI else ".")
    report = write_report(study, out, links=links, command=command, links_note=note)
    if parent is not None and parent.run_id is None:
        problem = f"the report is not attached to MLflow: study {study.study_name!r} has no parent run there"
    elif parent is not None and parent.run_id is not None:
        try:
            tell(parent.client, parent.run_id, study, report, command)
        except Exception as exc:
            problem = f"the study's MLflow run {parent.run_id} was not updated: {first_line(exc)}"
    return report, redact(problem) if problem else None


def best_so_far(study: optuna.Study) -> Iterator[tuple[int, float, int]]:
    """(trial number, best value among trials up to it, when it finished in ms) for each finished trial."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = None
    finished = (t for t in study.get_trials(deepcopy=False) if t.state in trial_states.FINISHED)
    for t in sorted(finished, key=lambda t: t.number):
        value = t.value if t.state == TrialState.COMPLETE else None
        if value is not None and math.isfinite(value):
            best = value if best is None else (max if maximize else min)(best, value)
        if best is not None:
            when = t.datetime_complete.timestamp() if t.datetime_complete else time.time()
            yield t.number, best, int(when * 1000)


def tell(client: MlflowClient, run_id: str, study: optuna.Study, report: Report, command: str | None) -> None:
    """Attach the report and the space file to the parent run, log its metrics and tags, describe it."""
    from mlflow.entities import Metric, RunTag

    trials = study.get_trials(deepcopy=False)
    now = int(time.time() * 1000)
    metrics = [Metric(key, sum(1 for t in trials if t.state == state), now, 0) for state, key in COUNT_METRICS.items()]
    tags = {TAG_NOTE: _description(study, trials, command)}
    single = len(study.directions) == 1
    if single:
        # Only the points not logged yet: a resumed study's report adds to the history, never doubles it.
        logged = {(m.step, m.value) for m in client.get_metric_history(run_id, BEST_VALUE)}
        metrics += [Metric(BEST_VALUE, value, when, number) for number, value, when in best_so_far(study)
                    if (number, value) not in logged]
    if single and any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trial
        tags[TAG_BEST_TRIAL] = str(best.number)
        tags.update({f"{BEST_TAG_PREFIX}{k}": str(v) for k, v in best.params.items()})
    elif not single:
        front = pareto_front(study)
        tags[TAG_PARETO_TRIALS] = ",".join(str(t.number) for t in front)
        tags[TAG_PARETO_RUNS] = ",".join(t.user_attrs.get(record_keys.ATTR_RUN_ID, "") for t in front)
    # A resumed study's new winner may lack a conditional parameter of the old one: its tag goes.
    stale = [k for k in client.get_run(run_id).data.tags if k.startswith(BEST_TAG_PREFIX) and k not in tags]
    run_tags = [RunTag(k, redact(v)[: record_keys.MAX_TAG_CHARS] if k != TAG_NOTE else redact(v))
                for k, v in tags.items()]
    for i in range(0, max(len(metrics), 1), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH], tags=run_tags if i == 0 else [])
    for key in stale:
        client.delete_tag(run_id, key)
    for path in report.files:
        client.log_artifact(run_id, str(path), REPORT_ARTIFACTS)
    _attach_space(client, run_id, study)


def _attach_space(client: MlflowClient, run_id: str, study: optuna.Study) -> None:
    """The space file as it is on disk (when it still is), and the resolved spec the study ran with."""
    import yaml

    source = study.user_attrs.get(record_keys.STUDY_SPACE_FILE)
    # The file may hold a store URL with its password: it goes to MLflow masked by value, like everything else.
    if source and (text := masked_space_file(source)) is not None:
        client.log_text(run_id, text, f"{SPACE_ARTIFACTS}/{Path(source).name}")
    resolved = study.user_attrs.get(record_keys.STUDY_SPEC)
    if resolved:
        # Store URLs are masked in it; any other secret the space file's URLs hold, by value (learnt above).
        text = redact(yaml.safe_dump(resolved, sort_keys=False))
        client.log_text(run_id, text, f"{SPACE_ARTIFACTS}/{RESOLVED_SPACE}")


def _description(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], command: str | None) -> str:
    count = {s: sum(1 for t in trials if t.state == s) for s in COUNT_METRICS}
    lines = [f"Study **{study.study_name}**: {len(trials)} trials, {count[TrialState.COMPLETE]} complete, "
             f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed."]
    if len(study.directions) == 1 and count[TrialState.COMPLETE]:
        best = study.best_trial
        metric = study.user_attrs.get(record_keys.STUDY_METRIC) or "value"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        lines.append(f"Best {metric} **{best.value:.4g}** at trial {best.number}"
                     + (f" ({params})." if params else "."))
    if len(study.directions) > 1 and count[TrialState.COMPLETE]:
        names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
        front = pareto_front(study)
        lines.append(f"Pareto front ({', '.join(names)}): " + "; ".join(
            f"trial {t.number} (" + ", ".join(f"{n}={v:.4g}" for n, v in zip(names, t.values, strict=True)) + ")"
            for t in front) + ".")
    if command:
        lines.append(f"To run this search again: `{command}` (the space file is attached under `{SPACE_ARTIFACTS}/`, "
                     f"with `{SPACE_ARTIFACTS}/{RESOLVED_SPACE}`: every value it ran with).")
    lines.append(f"The report (history, curves, importances, slices, the timeline per device slot, every trial) is "
                 f"`{REPORT_ARTIFACTS}/{REPORT_PAGE}` among this run's artifacts, with a PNG per plot.")
    return "\n\n".join(lines)


def publish_run_report(spec: Spec, study: optuna.Study, tracker: StudyTracker, parent_run_id: str,
                       say: Callable[[str, bool], None]) -> None:
    """Write the study's report and tell its parent run; a failure is one warning line, never the run's."""
    from hpsearch.reporting.html_report import default_report_dir

    try:
        parent = ParentRun(tracker.client, tracker.experiment_id, parent_run_id)
        report, problem = publish(study, spec.tracking.uri, default_report_dir(spec.study.name), parent)
        say(f"report: {report.page}", False)
    except Exception as exc:
        problem = f"the study report was not written: {type(exc).__name__}: {first_line(exc)}"
    if problem:
        say(f"WARNING: {redact(problem)}", True)
