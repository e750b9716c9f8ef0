"""`status` reads the study through pandas (`trials_dataframe`) and keeps its rows as they were;
`--sort value` puts the best first in the study's direction and `--top K` keeps the first K rows."""

from __future__ import annotations

import csv
import io
import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpsearch.cli.main import main
from hpsearch.core import record_keys
from hpsearch.storage.stores import open_storage

STATE = optuna.trial.TrialState
SPACE = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "optimizer": CategoricalDistribution(["sgd", "adamw"]),
         "batch_size": CategoricalDistribution([16, 32, 64])}


def status(capsys, storage: str, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["status", "--study", "s", "--storage", storage, *argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def make_study(workdir):
    """make_study(direction, outcomes) → (storage, study): one trial per (state, value, reports) outcome, in order."""

    def make(direction: str, outcomes: list[tuple[STATE, float | None, list[float]]]):
        storage = str(workdir / "studies" / "journal.log")
        study = optuna.create_study(study_name="s", storage=open_storage(storage), direction=direction)
        for state, value, reports in outcomes:
            trial = study.ask(SPACE)
            for step, report in enumerate(reports, start=1):
                trial.report(report, step)
            if state != STATE.RUNNING:
                study.tell(trial, value, state=None if state == STATE.COMPLETE else state)
        return storage, study

    return make


OUTCOMES = [
    (STATE.COMPLETE, 0.50, [0.4, 0.5]),
    (STATE.PRUNED, None, [0.2, 0.3]),     # ranks by its last report, 0.3
    (STATE.COMPLETE, 0.90, [0.9]),
    (STATE.FAIL, None, []),               # no value at all: last
    (STATE.COMPLETE, 0.70, [0.7]),
    (STATE.COMPLETE, 0.90, [0.9]),        # a tie with trial 2: the lower number first
    (STATE.RUNNING, None, [0.6]),
]


def test_sort_value_puts_the_best_first_for_maximize(capsys, make_study):
    storage, _ = make_study("maximize", OUTCOMES)
    code, out, err = status(capsys, storage, "--format", "json", "--sort", "value")
    assert code == 0, err
    assert [(r["number"], r["value"]) for r in json.loads(out)] == [
        (2, 0.9), (5, 0.9), (4, 0.7), (6, 0.6), (0, 0.5), (1, 0.3), (3, None)]
    code, out, err = status(capsys, storage, "--format", "json", "--sort", "value", "--top", "2")
    assert code == 0, err
    assert [r["number"] for r in json.loads(out)] == [2, 5]


def test_sort_value_follows_a_minimized_metric(capsys, make_study):
    storage, _ = make_study("minimize", OUTCOMES)
    code, out, err = status(capsys, storage, "--format", "csv", "--sort", "value", "--top", "3")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["number"], r["value"]) for r in rows] == [("1", "0.3"), ("0", "0.5"), ("6", "0.6")]


def test_default_order_is_by_number_and_top_keeps_the_first_rows(capsys, make_study):
    storage, study = make_study("maximize", OUTCOMES)
    code, out, err = status(capsys, storage, "--format", "json", "--top", "3")
    assert code == 0, err
    assert [r["number"] for r in json.loads(out)] == [0, 1, 2]
    code, out, err = status(capsys, storage, "--top", "2", "--sort", "value")
    assert code == 0, err
    assert "study s: 2 of 7 trials" in out
    assert "COMPLETE" in out
    code, out, err = status(capsys, storage, "--format", "json", "--sort", "number", "--top", "100")
    assert code == 0, err
    assert [r["number"] for r in json.loads(out)] == [t.number for t in study.trials]


def test_csv_columns_stay_put_however_sorted(capsys, workdir):
    storage = str(workdir / "studies" / "journal.log")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    study.tell(study.ask({"lr": FloatDistribution(1e-4, 1e-1)}), 0.1)
    study.tell(study.ask({"lr": FloatDistribution(1e-4, 1e-1), "momentum": FloatDistribution(0, 1)}), 0.9)
    headers = []
    for argv in ((), ("--sort", "value")):
        code, out, err = status(capsys, storage, "--format", "csv", *argv)
        assert code == 0, err
        headers.append(out.splitlines()[0])
    assert headers[0] == headers[1] == ("number,state,value,epochs_run,duration_s,mlflow_run_id,reason,"
                                        "params.lr,params.momentum")


@pytest.mark.parametrize("top", ["0", "-3"])
def test_top_below_one_is_refused_in_one_line(capsys, make_study, top):
    storage, _ = make_study("maximize", OUTCOMES[:1])
    code, out, err = status(capsys, storage, "--top", top)
    assert code == 2
    assert out == ""
    assert err == f"error: --top: must be >= 1, got {top}\n"


def test_rows_keep_their_values_through_the_data_frame(capsys, workdir):
    """What the frame alone would blur: ints in a column with gaps, a NaN report, suggestion order, user attrs."""
    storage = str(workdir / "studies" / "journal.log")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    ordered = {"optimizer": CategoricalDistribution(["sgd", "adamw"]), "epochs": IntDistribution(1, 9),
               "batch_size": CategoricalDistribution([16, 32])}
    first = study.ask(ordered)
    first.set_user_attr(record_keys.ATTR_RUN_ID, "abc123")
    study.tell(first, float("inf"))  # a non-finite value is null
    second = study.ask({"lr": FloatDistribution(0.1, 1.0)})
    second.report(0.25, 1)
    second.report(float("nan"), 2)  # its last report is NaN: null, and still two epochs run
    second.set_user_attr(record_keys.ATTR_FAIL_REASON, "RuntimeError: boom\nwhere")
    study.tell(second, state=STATE.FAIL)
    code, out, err = status(capsys, storage, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert list(rows[0]) == ["number", "state", "value", "epochs_run", "duration_s", "params", "mlflow_run_id",
                             "reason"]
    assert rows[0]["value"] is None
    assert rows[0]["mlflow_run_id"] == "abc123"
    assert rows[0]["reason"] is None
    assert list(rows[0]["params"].items()) == list(first.params.items())  # in suggestion order, ints as ints
    assert all(type(v) is type(first.params[k]) for k, v in rows[0]["params"].items())
    assert rows[1]["state"] == "FAIL"
    assert rows[1]["value"] is None
    assert rows[1]["epochs_run"] == 2
    assert rows[1]["params"] == {"lr": second.params["lr"]}
    assert rows[1]["reason"] == "RuntimeError: boom\nwhere"
    assert rows[1]["mlflow_run_id"] is None
    assert isinstance(rows[1]["duration_s"], float)
