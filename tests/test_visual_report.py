"""`hpsearch report` and the parent run's story: the page, its PNGs, and what the study's MLflow run holds.

End-to-end checks use the session's finished study (trained once); the edge cases are studies built
directly with Optuna's API (no training).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.cli.live import LiveView
from hpsearch.cli.main import main
from hpsearch.core import record_keys
from hpsearch.reporting import parent_run as study_story
from hpsearch.reporting.html_report import REPORT_PAGE, write_report
from hpsearch.tracking.mlflow_client import client_for
from hpsearch.tracking.study_runs import StudyTracker

from .support import run_cli

PLOT_TITLES = ("Optimization History Plot", "Intermediate Values Plot", "Hyperparameter Importances",
               "Parallel Coordinate Plot", "Slice Plot", "Timeline Plot per Device Slot")
PNGS = ("history", "intermediate", "importances", "parallel", "slice", "timeline")


def _self_contained(page: str) -> bool:
    """plotly.js is in the page itself, and nothing is fetched from the network."""
    return "plotly.js v" in page and 'src="http' not in page and "src='http" not in page


def _parent(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`hpsearch.role` = 'study'")
    assert len(runs) == 1
    return exp.experiment_id, runs[0]


def _artifacts(client, run_id: str, folder: str) -> set[str]:
    return {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, folder)}


# ---------------------------------------------------------------- end to end, on the finished study


@pytest.mark.slow
def test_run_and_report_tell_the_study_story(finished_study):
    client = client_for("sqlite:///mlruns/mlflow.db")
    experiment_id, parent = _parent(client, "finished")
    # `hpsearch run` (the fixture's) already attached the report and the space file to the parent run.
    assert {REPORT_PAGE, *(f"{name}.png" for name in PNGS)} <= _artifacts(client, parent.info.run_id, "report")
    assert {"finished.yaml", "resolved.yaml"} <= _artifacts(client, parent.info.run_id, "space")

    proc = run_cli("report", cwd=finished_study)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"studies/finished/report/{REPORT_PAGE}"
    assert "WARNING" not in proc.stderr, proc.stderr

    out = finished_study / "studies" / "finished" / "report"
    assert all((out / f"{name}.png").stat().st_size > 1000 for name in PNGS)
    page = (out / REPORT_PAGE).read_text()
    assert _self_contained(page)
    assert all(title in page for title in PLOT_TITLES)
    assert "cpu #0" in page  # the timeline's row: the slot each trial ran on (recorded by the run)
    study = optuna.load_study(study_name="finished", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(finished_study / "studies" / "journal.log"))))
    for t in study.trials:  # every trial links to its MLflow run
        assert f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{t.user_attrs['mlflow_run_id']}" in page

    run = client.get_run(parent.info.run_id)
    # best_value: one point per finished trial, stepped by trial number; the run and the report
    # both wrote it, and it is not doubled.
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "best_value"))
    values = [t.value for t in sorted(study.trials, key=lambda t: t.number)]
    assert history == [(i, max(values[: i + 1])) for i in range(len(values))]
    assert run.data.metrics["trials_complete"] == 4
    assert run.data.metrics["trials_pruned"] == run.data.metrics["trials_failed"] == 0
    best = study.best_trial
    assert run.data.tags["hpsearch.best_trial"] == str(best.number)
    assert {k: run.data.tags[f"best.{k}"] for k in best.params} == {k: str(v) for k, v in best.params.items()}
    note = run.data.tags["mlflow.note.content"]
    assert "`hpsearch run finished.yaml --study-name finished --seed 11 --n-trials 4`" in note
    assert "report/report.html" in note


@pytest.mark.slow
def test_report_without_an_mlflow_run_warns_once_and_still_writes_the_page(finished_study):
    proc = run_cli("report", "--study", "finished", "--tracking-uri", "sqlite:///other/mlflow.db",
                   "--out", "elsewhere", cwd=finished_study)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("WARNING: the report is not attached to MLflow: "), proc.stderr
    assert proc.stdout.splitlines()[-1] == f"elsewhere/{REPORT_PAGE}"
    assert _self_contained((finished_study / "elsewhere" / REPORT_PAGE).read_text())


def test_an_out_that_is_a_file_is_refused_naming_the_option(workdir, capsys):
    (workdir / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--out", "a-file"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: --out: a-file is a file, not a folder\n"


def test_a_failing_report_at_the_end_of_a_run_is_one_warning_line(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError("No space left on device\nmore detail")

    monkeypatch.setattr(study_story, "publish", broken)
    spec = SimpleNamespace(tracking=SimpleNamespace(uri="sqlite:///x.db"), study=SimpleNamespace(name="s"))
    tracker = SimpleNamespace(client=None, experiment_id="1")
    said = LiveView("val_accuracy", "maximize", 1, interactive=False)
    study_story.publish_run_report(spec, optuna.create_study(), tracker, "run-id", said.say)  # returns: exit 0 follows
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "WARNING: the study report was not written: OSError: No space left on device"]
    assert captured.out == ""


# ---------------------------------------------------------------- edge cases, built with Optuna's API

LR = FloatDistribution(1e-4, 1e-1, log=True)
OPT = CategoricalDistribution(["sgd", "adamw"])


def _add(study, state=TrialState.COMPLETE, value=None, values=None, params=None, curve=None, start=None,
         seconds=30.0, **attrs):
    params = params if params is not None else {"lr": 0.01}
    trial = create_trial(state=state, value=value, values=values, params=params,
                         distributions={k: (OPT if isinstance(v, str) else LR) for k, v in params.items()},
                         intermediate_values=curve or {}, user_attrs=attrs)
    if start is not None:
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=seconds)
    study.add_trial(trial)


def _failed():
    study = optuna.create_study(direction="maximize")
    _add(study, value=0.8, curve={1: 0.5, 2: 0.8})
    for _ in range(2):
        _add(study, TrialState.FAIL, **{record_keys.ATTR_FAIL_REASON: "out of memory: <b>resnet</b>"})
    return study


def _single():
    study = optuna.create_study(direction="maximize")
    _add(study, value=0.9, curve={1: 0.7, 2: 0.9})
    return study


def _categorical():
    study = optuna.create_study(direction="minimize")
    for i in range(5):
        _add(study, value=i / 10, params={"optimizer": ["sgd", "adamw"][i % 2]}, curve={1: 1.0, 2: i / 10})
    _add(study, TrialState.PRUNED, params={"optimizer": "sgd"}, curve={1: 2.0})
    return study


def _multi():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i in range(4):
        _add(study, values=[i / 10, (i - 2) ** 2], params={"lr": 0.001 * (i + 1), "optimizer": "sgd"})
    return study


@pytest.mark.parametrize(("make", "not_drawn"), [
    (_failed, {"Hyperparameter importances"}),
    (_single, {"Hyperparameter importances"}),
    (_categorical, set()),
    (_multi, {"Intermediate values"}),
])
def test_every_study_gets_a_report_with_a_sentence_where_a_plot_does_not_apply(tmp_path, make, not_drawn):
    study = make()
    report = write_report(study, tmp_path)
    assert set(report.notes) == not_drawn
    page = report.page.read_text()
    assert _self_contained(page)
    for title in not_drawn:  # said in one sentence on the page, no picture
        assert re.search(rf"<h2>{title}</h2>.*?<p class='note'>[^<]+\.</p>", page, re.S)
    assert all(p.is_file() for p in report.images)
    assert len(report.images) == 6 - len(not_drawn) + (make is _multi)
    if make is _failed:
        assert "out of memory: &lt;b&gt;resnet&lt;/b&gt;" in page  # a fail reason is text, never markup
    if make is _multi:
        assert "Pareto" in page


def test_a_plot_that_raises_is_one_sentence_and_the_others_are_drawn(tmp_path, monkeypatch):
    import optuna.visualization

    def broken(*args, **kwargs):
        raise RuntimeError("plotly exploded\nsecond line")

    monkeypatch.setattr(optuna.visualization, "plot_parallel_coordinate", broken)
    report = write_report(_categorical(), tmp_path)
    assert report.notes == {"Parallel coordinates": "Not drawn: RuntimeError: plotly exploded"}
    assert len(report.images) == 6  # its PNG comes from the matplotlib twin, which still works
    assert "Not drawn: RuntimeError: plotly exploded" in report.page.read_text()


def test_a_200_trial_study_reports_and_tells_its_story_in_seconds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="big", direction="minimize")
    t0 = datetime(2026, 1, 1, 12, 0)
    for i in range(200):
        state = (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)[i % 4]
        loss = 1 / (1 + i % 17)
        curve = {} if state == TrialState.FAIL else {e: loss + 1 / e for e in range(1, 6 if i % 4 < 2 else 3)}
        _add(study, state, value=loss if state == TrialState.COMPLETE else None,
             params={"lr": 10 ** -(1 + i % 3), "optimizer": ["sgd", "adamw"][i % 2]}, curve=curve,
             start=t0 + timedelta(seconds=30 * (i // 2)), seconds=29,
             **{record_keys.ATTR_SLOT: f"cuda:{i % 2} #{i % 2}"})
    tracker = StudyTracker("sqlite:///mlruns/mlflow.db", "big")
    run_id = tracker.parent_run("big", {})
    parent = study_story.ParentRun(tracker.client, tracker.experiment_id, run_id)

    started = time.monotonic()
    report, problem = study_story.publish(study, "sqlite:///mlruns/mlflow.db", tmp_path / "report", parent)
    seconds = time.monotonic() - started
    assert problem is None, (problem, seconds)
    assert seconds < 60, (problem, seconds)
    assert report.notes == {}
    assert re.search(r"cuda:0 #0 \(\d+% busy\)", report.page.read_text())

    run = tracker.client.get_run(run_id)
    assert (run.data.metrics["trials_complete"], run.data.metrics["trials_pruned"],
            run.data.metrics["trials_failed"]) == (100, 50, 50)
    history = tracker.client.get_metric_history(run_id, "best_value")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(history) == len(finished) == 150
    assert min(m.value for m in history) == pytest.approx(1 / 17)
    assert not any(math.isnan(m.value) for m in history)
    assert run.data.tags["best.optimizer"] == str(study.best_trial.params["optimizer"])


def test_importances_of_a_resumed_study_with_an_edited_range_print_no_warning(tmp_path):
    """A range widened between runs leaves a parameter's values thin in parts: Optuna's importance evaluator
    warned about it on stderr (two lines, every report)."""
    import warnings

    study = optuna.create_study(direction="maximize")
    for i in range(6):
        dist = FloatDistribution(0.0, 1.0 + i)  # the space file's range, edited before each resume
        study.add_trial(create_trial(params={"a": 0.5 + i / 2}, distributions={"a": dist}, value=float(i)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report(study, tmp_path)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
