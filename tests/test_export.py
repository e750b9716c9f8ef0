"""`best --export`: atomic, never over someone's files, never a stale model.pt beside a newer best.yaml."""

from __future__ import annotations

import json
import os

import optuna
import pytest
import yaml

from hpsearch.cli.main import main
from hpsearch.core import record_keys
from hpsearch.results.export import export_best
from hpsearch.spec.study_spec import parse_spec
from hpsearch.storage.stores import open_storage
from hpsearch.tracking import checkpoints

from .support import TINY_SPACE, merge

PASSWORD = "exp0rt-s3cret"


def make_study(workdir, value: float = 0.5, params: dict | None = None) -> tuple[str, optuna.Study]:
    """A journal study as `hpsearch run` leaves it (spec recorded), with one COMPLETE trial and no MLflow run."""
    storage = str(workdir / "studies" / "journal.log")
    study = optuna.create_study(study_name="tiny", storage=open_storage(storage), direction="maximize")
    data = merge(TINY_SPACE, {"tracking": {"uri": f"http://alice:{PASSWORD}@mlflow.example:5000"},
                              "study": {"storage": f"postgresql://alice:{PASSWORD}@db/hps"}})
    # A study recorded before masking existed: the export must mask what it finds there too.
    study.set_user_attr(record_keys.STUDY_SPEC, parse_spec(data, None).to_dict())
    study.set_user_attr(record_keys.STUDY_METRIC, "val_accuracy")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
            "dropout": optuna.distributions.FloatDistribution(0.0, 0.5)}
    study.add_trial(optuna.trial.create_trial(params=params or {"lr": 0.01, "dropout": 0.1}, distributions=dist,
                                              value=value))
    return storage, study


def call(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def export(capsys, storage: str, out, *extra: str) -> tuple[int, str, str]:
    return call(capsys, "best", "--study", "tiny", "--storage", storage, "--tracking-uri",
                "sqlite:///mlruns/mlflow.db", "--export", str(out), *extra)


def test_export_writes_a_complete_folder_without_the_storage_or_a_password(capsys, workdir):
    storage, _ = make_study(workdir)
    out = workdir / "exports" / "winner"
    code, stdout, err = export(capsys, storage, out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["best.yaml", "trial.json"]  # no checkpoint was logged
    assert [p.name for p in out.parent.iterdir()] == ["winner"]  # the temporary folder is gone
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["study"]["storage"] is None  # an export reproduces without the study's storage
    assert best["tracking"]["uri"] == "http://mlflow.example:5000"
    assert best["train"]["lr"] == pytest.approx(0.01)
    for text in (stdout, err, (out / "best.yaml").read_text(), (out / "trial.json").read_text()):
        assert PASSWORD not in text


def test_export_refuses_a_folder_that_is_not_empty(capsys, workdir):
    storage, _ = make_study(workdir)
    out = workdir / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, stdout, err = export(capsys, storage, out)
    assert code == 2
    assert err.strip().splitlines() == [f"error: --export: {out} is not empty; pass --force to replace its files"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".mine")] == []

    (workdir / "afile").write_text("x")
    code, _, err = export(capsys, storage, workdir / "afile")
    assert code == 2
    assert "--export" in err
    assert "not a folder" in err


def test_force_replaces_the_whole_export_and_never_keeps_a_stale_model(capsys, workdir):
    storage, study = make_study(workdir)
    out = workdir / "best"
    out.mkdir()
    (out / "model.pt").write_bytes(b"an older winner's weights")
    (out / "best.yaml").write_text("old: true\n")
    (out / "notes.txt").write_text("kept")
    code, _, err = export(capsys, storage, out, "--force")
    assert code == 0, err
    # the new winner logged no checkpoint: the old model.pt must not sit beside the new best.yaml
    assert sorted(p.name for p in out.iterdir()) == ["best.yaml", "notes.txt", "trial.json"]
    assert "old" not in yaml.safe_load((out / "best.yaml").read_text())
    assert json.loads((out / "trial.json").read_text())["trial_number"] == study.best_trial.number


def test_an_export_that_fails_half_way_leaves_nothing(capsys, workdir, monkeypatch):
    storage, study = make_study(workdir)

    def unreachable(*args, **kwargs):
        raise OSError("the tracking server went away")

    monkeypatch.setattr(checkpoints, "download_checkpoint", unreachable)
    record = {"study_name": "tiny", "trial_number": 0, "metric": "val_accuracy", "value": 0.5,
              "params": {"lr": 0.01, "dropout": 0.1}, "mlflow_run_id": "abc", "checkpoint": "x/model.pt"}
    out = workdir / "best"
    with pytest.raises(OSError, match="the tracking server went away"):
        export_best(study, record, out, "sqlite:///mlruns/mlflow.db")
    assert not out.exists()
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".best")] == []

    out.mkdir()
    (out / "best.yaml").write_text("old: true\n")
    (out / "model.pt").write_bytes(b"old")
    with pytest.raises(OSError, match="the tracking server went away"):
        export_best(study, record, out, "sqlite:///mlruns/mlflow.db", force=True)
    # the old export is untouched: it was never half-replaced
    assert (out / "best.yaml").read_text() == "old: true\n"
    assert (out / "model.pt").read_bytes() == b"old"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_an_export_folder_gets_the_permissions_the_umask_gives(capsys, workdir, umask):
    storage, _ = make_study(workdir)
    out = workdir / "exports" / "winner"
    previous = os.umask(umask)
    try:
        code, _, err = export(capsys, storage, out)
    finally:
        os.umask(previous)
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not mkdtemp's 0700
