"""Study data from a shared storage is not trusted: names stay inside studies/, control bytes are shown escaped.

Each table is one row per finding: a new one is a new row.
"""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.cli.main import main
from hpsearch.core import record_keys
from hpsearch.core.locations import DEFAULT_STORAGE, LAST_RUN_FILE
from hpsearch.storage.stores import open_storage

ESC = "\x1b]0;pwned\x07\x1b[2J"  # sets the window title, clears the screen
ESCAPED = r"\x1b]0;pwned\x07\x1b[2J"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _plain_study(name: str, params: dict | None = None, attrs: dict | None = None, study_attrs: dict | None = None,
                 state: TrialState = TrialState.COMPLETE) -> optuna.Study:
    """A study as plain Optuna makes one in a shared storage: any name, any text in its trials."""
    study = optuna.create_study(study_name=name, storage=open_storage(DEFAULT_STORAGE), direction="maximize")
    for k, v in (study_attrs or {}).items():
        study.set_user_attr(k, v)
    dists = {k: optuna.distributions.CategoricalDistribution([v]) for k, v in (params or {"lr": 0.1}).items()}
    trial = study.ask(dists)
    for k, v in (attrs or {}).items():
        trial.set_user_attr(k, v)
    trial.report(0.25, 0)
    study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    return study


def _files_outside_studies(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and "studies" not in p.relative_to(root).parts[:1]
                  and "mlruns" not in p.relative_to(root).parts[:1])


# ------------------------------------------------------------------ study names from storage


def _abs_name(tmp_path) -> str:
    return str(tmp_path / "elsewhere")


NAMES = [
    pytest.param(lambda tmp: "../../x", id="dot-dot"),
    pytest.param(lambda tmp: "..", id="only-dots"),
    pytest.param(_abs_name, id="absolute"),
    pytest.param(lambda tmp: "a/b", id="slash"),
    pytest.param(lambda tmp: "x" + ESC, id="escape-bytes"),
]
COMMANDS = [
    pytest.param(("report",), id="report"),
    pytest.param(("best", "--export"), id="best-export"),
    pytest.param(("status",), id="status"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("make_name", NAMES)
def test_a_study_name_from_storage_is_held_to_the_file_rule(workdir, capsys, command, make_name):
    name = make_name(workdir)
    _plain_study(name)
    before = _files_outside_studies(workdir)
    code, out, err = _cli(capsys, command[0], "--study", name, *command[1:])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: --study: "), err
    assert "\x1b" not in err
    assert "Traceback" not in err
    assert _files_outside_studies(workdir) == before  # nothing written outside studies/
    assert not (workdir / "elsewhere").exists()


def test_a_study_name_from_the_last_run_file_is_held_to_the_same_rule(workdir, capsys):
    _plain_study("../../x")
    LAST_RUN_FILE.write_text(json.dumps({"study_name": "../../x", "storage": None,
                                         "tracking_uri": "sqlite:///mlruns/mlflow.db", "space_file": None}))
    code, _, err = _cli(capsys, "report")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert str(LAST_RUN_FILE) in err
    assert _files_outside_studies(workdir) == []


def test_a_study_folder_that_links_outside_studies_is_refused(workdir, capsys):
    _plain_study("tiny")
    (workdir / "outside").mkdir()
    (workdir / "studies" / "tiny").symlink_to(workdir / "outside")
    code, _, err = _cli(capsys, "report", "--study", "tiny")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "outside" in err
    assert "studies" in err
    assert list((workdir / "outside").iterdir()) == []


# ------------------------------------------------------------------ control bytes in study data


STATUS, CSV, BEST = ("status",), ("status", "--format", "csv"), ("best",)
# (where the escape sequence is in the study, the commands that print that field)
HOSTILE_DATA = [
    pytest.param({"params": {"opt" + ESC: "adam"}}, (STATUS, CSV, BEST), id="param-name"),
    pytest.param({"params": {"opt": "adam" + ESC}}, (STATUS, CSV, BEST), id="param-value"),
    pytest.param({"attrs": {record_keys.ATTR_RUN_ID: "run" + ESC}}, (CSV, BEST), id="run-id"),
    pytest.param({"attrs": {record_keys.ATTR_FAIL_REASON: "boom" + ESC}, "state": TrialState.FAIL}, (STATUS, CSV),
                 id="fail-reason"),
    pytest.param({"study_attrs": {record_keys.STUDY_METRIC: "acc" + ESC}}, (BEST,), id="metric-name"),
]


@pytest.mark.parametrize(("how", "commands"), HOSTILE_DATA)
def test_control_sequences_from_study_data_are_shown_escaped(workdir, capsys, how, commands):
    _plain_study("tiny", **how)
    for command in commands:
        code, out, err = _cli(capsys, command[0], "--study", "tiny", *command[1:])
        assert code == 0, err
        assert "\x1b" not in out + err, command
        assert "\x07" not in out + err, command
        assert ESCAPED[:20] in out.replace("\n", ""), (command, out)  # the table may fold a long cell


def test_json_output_keeps_study_data_exact(workdir, capsys):
    _plain_study("tiny", params={"opt": "adam" + ESC})
    code, out, _ = _cli(capsys, "status", "--study", "tiny", "--format", "json")
    assert code == 0
    assert "\x1b" not in out  # JSON encodes the byte itself
    assert json.loads(out)[0]["params"]["opt"] == "adam" + ESC


def test_live_view_shows_a_fail_reason_escaped(capsys):
    from hpsearch.cli.live import LiveView
    from hpsearch.orchestration.devices import Slot

    for interactive in (True, False):
        live = LiveView("val_accuracy", "maximize", 3, interactive=interactive)
        live.start({}, None, None)
        live.assign(Slot(0, None), 0)
        live.trial_ended(Slot(0, None), 0, "FAIL", None, "boom" + ESC)
        live.message("boom" + ESC)
        live.close()
    out = capsys.readouterr().out
    assert "\x1b]0" not in out
    assert "\x07" not in out
    assert "boom\\x1b]0;pwned" in out


# ------------------------------------------------------------------ the last run file


MALFORMED_LAST_RUN = [
    pytest.param("{}", id="no-fields"),
    pytest.param('{"study_name": 3, "tracking_uri": "x"}', id="name-not-text"),
    pytest.param("[1, 2]", id="not-a-mapping"),
    pytest.param('{"study_name": "tiny"}', id="no-tracking-uri"),
]


@pytest.mark.parametrize("text", MALFORMED_LAST_RUN)
def test_a_malformed_last_run_file_counts_as_absent(workdir, capsys, text):
    LAST_RUN_FILE.parent.mkdir()
    LAST_RUN_FILE.write_text(text)
    code, _, err = _cli(capsys, "status")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "no study has been run from this folder yet" in err
