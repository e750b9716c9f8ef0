"""`status` and the live view print whatever a trial's text holds: rich markup in a fail reason is text."""

from __future__ import annotations

import json

import optuna
import pytest

from hpsearch.cli.live import LiveView
from hpsearch.cli.main import main
from hpsearch.core import record_keys
from hpsearch.orchestration.devices import Slot
from hpsearch.storage.stores import open_storage

REASON = "RuntimeError: boom [/x] then [bold]loud and [/] [link=file:///etc]x[/link]"


def test_status_prints_a_fail_reason_with_markup(capsys, workdir):
    storage = str(workdir / "studies" / "journal.log")
    study = optuna.create_study(study_name="tiny", storage=open_storage(storage), direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)})
    trial.set_user_attr(record_keys.ATTR_FAIL_REASON, REASON)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(SystemExit) as exc:
        main(["status", "--study", "tiny", "--storage", storage])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert "FAIL" in out
    assert "[/x]" in out
    assert "[bold]" in out  # shown as written, not interpreted


def test_live_view_prints_a_fail_reason_with_markup(capsys):
    for interactive in (True, False):
        live = LiveView("val_accuracy", "maximize", 3, interactive=interactive)
        live.start({}, None, None)
        live.assign(Slot(0, None), 0)
        live.trial_ended(Slot(0, None), 0, "FAIL", None, REASON)
        live.message(REASON)
        live.close()
    out = capsys.readouterr().out
    assert "[/x]" in out
    assert "[bold]" in out


@pytest.mark.parametrize(("state", "value"), [(optuna.trial.TrialState.FAIL, None),
                                          (optuna.trial.TrialState.PRUNED, 0.75)])
def test_status_shows_a_pruned_trials_last_value_and_no_value_for_a_failed_one(capsys, workdir, state, value):
    storage = str(workdir / "studies" / "journal.log")
    study = optuna.create_study(study_name="tiny", storage=open_storage(storage), direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)})
    trial.report(0.75, 1)  # its last epoch's: a result only for a trial the pruner stopped
    study.tell(trial, state=state)
    with pytest.raises(SystemExit) as exc:
        main(["status", "--study", "tiny", "--storage", storage, "--format", "json"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert json.loads(out)[0]["value"] == value
