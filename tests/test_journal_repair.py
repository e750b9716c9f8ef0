"""A torn last journal line (crash or full disk mid-append) is set aside; other damage is one clear line."""

from __future__ import annotations

import json

import optuna
import pytest

from hpsearch.core.errors import RunFailure
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.storage.journal import TORN_SUFFIX
from hpsearch.storage.stores import open_storage

from .support import run_cli


def _journal(workdir):
    return workdir / DEFAULT_STORAGE


def _study_with_trials(n: int) -> optuna.Study:
    study = optuna.create_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    for i in range(n):
        trial = study.ask()
        study.tell(trial, float(i))
    return study


def _tear(journal) -> bytes:
    """Append the first half of a real record without its newline, as a write cut short leaves it."""
    last = journal.read_bytes().splitlines(keepends=True)[-1]
    torn = last[: len(last) // 2]
    with open(journal, "ab") as f:
        f.write(torn)
    return torn


def test_a_torn_tail_is_set_aside_and_the_study_goes_on(workdir, capsys):
    _study_with_trials(3)
    journal = _journal(workdir)
    whole = journal.read_bytes()
    torn = _tear(journal)

    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1
    assert "torn" in warning[0]
    assert f"{DEFAULT_STORAGE}{TORN_SUFFIX}" in warning[0]
    assert journal.read_bytes() == whole  # cut back to the last whole record
    assert (workdir / f"{DEFAULT_STORAGE}{TORN_SUFFIX}").read_bytes() == torn + b"\n"

    # Writing on must not glue a new record onto the torn bytes (that made every later open fail).
    trial = study.ask()
    study.tell(trial, 9.0)
    again = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    assert [t.state for t in again.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert capsys.readouterr().err == ""  # a whole journal opens silently


def test_a_whole_last_record_without_its_newline_is_kept(workdir, capsys):
    """A write cut just before its newline leaves the record whole: the trial it finished stays finished."""
    _study_with_trials(3)
    journal = _journal(workdir)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-1])  # the last record is trial 2's tell: COMPLETE, value 2.0

    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    complete = optuna.trial.TrialState.COMPLETE
    assert [(t.state, t.value) for t in study.trials] == [(complete, 0.0), (complete, 1.0), (complete, 2.0)]
    assert journal.read_bytes() == whole  # its newline added back, nothing set aside
    assert not (workdir / f"{DEFAULT_STORAGE}{TORN_SUFFIX}").exists()
    assert capsys.readouterr().err == ""
    study.tell(study.ask(), 9.0)  # and the next record is not glued onto it
    again = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    assert [t.value for t in again.trials] == [0.0, 1.0, 2.0, 9.0]


def test_a_tail_torn_while_a_study_is_open_is_set_aside_before_the_next_write(workdir, capsys):
    study = _study_with_trials(2)  # this process runs on, while another one dies mid-append
    torn = _tear(_journal(workdir))
    trial = study.ask()
    study.tell(trial, 5.0)
    assert "torn" in capsys.readouterr().err
    assert (workdir / f"{DEFAULT_STORAGE}{TORN_SUFFIX}").read_bytes() == torn + b"\n"
    again = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    assert [t.value for t in again.trials] == [0.0, 1.0, 5.0]


def test_tears_accumulate_in_the_torn_file(workdir):
    _study_with_trials(1)
    journal = _journal(workdir)
    first = _tear(journal)
    open_storage(DEFAULT_STORAGE)
    second = _tear(journal)
    open_storage(DEFAULT_STORAGE)
    assert (workdir / f"{DEFAULT_STORAGE}{TORN_SUFFIX}").read_bytes() == first + b"\n" + second + b"\n"


def test_a_journal_that_still_does_not_parse_names_its_line(workdir):
    _study_with_trials(2)
    journal = _journal(workdir)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3][:10] + b"\n"  # a damaged record in the middle: not a tear, nothing to set aside
    journal.write_bytes(b"".join(lines))
    with pytest.raises(RunFailure, match=rf"^{DEFAULT_STORAGE} line 4 is not a valid journal record"):
        open_storage(DEFAULT_STORAGE)

    result = run_cli("status", "--study", "tiny", cwd=workdir, timeout=120)
    assert result.returncode == 1, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{DEFAULT_STORAGE} line 4 is not a valid journal record" in err[0]


@pytest.mark.slow
def test_a_run_resumes_after_a_torn_journal(write_space, workdir):
    space = write_space({"study": {"n_trials": 2}, "train": {"epochs": 1}})
    first = run_cli("run", str(space), "--n-trials", "1", cwd=workdir)
    assert first.returncode == 0, first.stderr
    torn = _tear(_journal(workdir))

    second = run_cli("run", str(space), cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert "torn" in second.stderr
    assert (workdir / f"{DEFAULT_STORAGE}{TORN_SUFFIX}").read_bytes() == torn + b"\n"
    study = optuna.load_study(study_name="tiny", storage=open_storage(DEFAULT_STORAGE))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert len(states) == 2  # the budget, exactly

    status = run_cli("status", "--study", "tiny", "--format", "json", cwd=workdir, timeout=120)
    assert status.returncode == 0, status.stderr
    assert [row["state"] for row in json.loads(status.stdout)] == ["COMPLETE"] * 2
