"""`hpsearch confirm`: the best configurations retrained over fresh seeds, counted exactly like trials, in MLflow
under one confirm run, and refused in one line where there is nothing to confirm."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpsearch.core import record_keys as keys
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.results import confirmation
from hpsearch.storage.stores import open_storage

from .support import TINY_SPACE, merge, run_cli, wait_for


def load(workdir, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(workdir / DEFAULT_STORAGE)))


def assert_each_retraining_once(study: optuna.Study, configs: list[int], seeds: int) -> dict:
    done = [(t.user_attrs[keys.ATTR_CONFIRM_OF], t.user_attrs[keys.ATTR_CONFIRM_INDEX])
            for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(done) == sorted((c, i) for c in configs for i in range(1, seeds + 1))  # none twice, none missing
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    return {(c, i): t for (c, i), t in zip(done, study.get_trials(states=(TrialState.COMPLETE,)), strict=True)}


def test_the_interval_is_students_t():
    assert confirmation.t95(2) == pytest.approx(4.303)
    assert confirmation.t95(22) == pytest.approx(2.086)  # between rows: the wider one below
    assert confirmation.t95(100) == pytest.approx(1.96)
    # Fresh training seeds: never the search's own, the same when a retraining is run again.
    seeds = {confirmation.confirm_seed(0, 3, i) for i in (1, 2, 3)}
    assert len(seeds) == 3
    assert confirmation.confirm_seed(0, 3, 1) == confirmation.confirm_seed(0, 3, 1)
    from hpsearch.core.seeding import trial_seed

    assert trial_seed(0, 3) not in seeds


@pytest.mark.slow
def test_ctrl_c_then_confirm_again_finishes_what_is_missing_and_retrains_nothing_twice(finished_study):
    search = load(finished_study, "finished")
    ranked = sorted(search.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    top = [t.number for t in ranked[:2]]
    cmd = [sys.executable, "-m", "hpsearch", "confirm", "finished.yaml", "--top", "2", "--seeds", "2"]
    proc = subprocess.Popen(cmd, cwd=finished_study, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def one_done():
            try:
                return load(finished_study, "finished-confirm").get_trials(states=(TrialState.COMPLETE,))
            except KeyError:
                return None
        wait_for(one_done, 240, "a first retraining")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "run the same command again to finish the confirmation" in output

    result = run_cli("confirm", "finished.yaml", "--top", "2", "--seeds", "2", "--format", "json",
                     cwd=finished_study)
    assert result.returncode == 0, result.stdout + result.stderr
    confirm = load(finished_study, "finished-confirm")
    retrained = assert_each_retraining_once(confirm, top, 2)
    for (config, _index), t in retrained.items():
        assert t.params == search.trials[config].params  # the configuration, as it was searched
    seeds = {t.user_attrs[keys.ATTR_CONFIRM_SEED] for t in retrained.values()}
    assert len(seeds) == 4

    reported = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert reported == load(finished_study, "finished").user_attrs[keys.STUDY_CONFIRMED]  # kept in the study
    ranking = reported["ranking"]
    assert [r["trial"] for r in ranking] == sorted(top, key=lambda c: -next(r["mean"] for r in ranking
                                                                          if r["trial"] == c))
    for row in ranking:
        values = [s["value"] for s in row["seeds"]]
        assert row["mean"] == pytest.approx(sum(values) / 2)
        assert row["ci95"][0] < row["mean"] < row["ci95"][1]
        assert row["single_run_value"] == search.trials[row["trial"]].value
    assert reported["winner"] == ranking[0]["trial"]

    # In MLflow: one confirm run nested in the study's parent run, each retraining a child of it with its seed.
    client = MlflowClient(f"sqlite:///{finished_study}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("finished")
    parent = client.search_runs([experiment.experiment_id], "tags.`optuna.study_name` = 'finished' and "
                                                            "tags.`hpsearch.role` = 'study'")[0]
    confirm_run = client.search_runs([experiment.experiment_id], "tags.`optuna.study_name` = 'finished-confirm' "
                                                                 "and tags.`hpsearch.role` = 'study'")
    assert len(confirm_run) == 1
    assert confirm_run[0].data.tags[keys.TAG_PARENT] == parent.info.run_id
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{confirm_run[0].info.run_id}' and "
                                  "attributes.status = 'FINISHED'")
    assert {(int(r.data.tags[keys.ATTR_CONFIRM_OF]), int(r.data.tags[keys.ATTR_CONFIRM_SEED]))
            for r in children} == {(c, t.user_attrs[keys.ATTR_CONFIRM_SEED]) for (c, _), t in retrained.items()}


def make_study(workdir, study: dict) -> None:
    """A study as `hpsearch run` creates it, with no trial trained (None in `study`: that key left out)."""
    from hpsearch.search.samplers import build_pruner, study_sampler
    from hpsearch.spec.study_spec import parse_spec
    from hpsearch.storage import stores

    data = merge(TINY_SPACE, {"study": study})
    data["study"] = {k: v for k, v in data["study"].items() if v is not None}
    spec = parse_spec(data, source="tiny.yaml")
    stores.create_or_resume(spec, study_sampler(spec.study.sampler, spec.search_space, 3),
                            build_pruner(spec.study.pruner), str(workdir / DEFAULT_STORAGE))


@pytest.mark.parametrize(("study", "says"), [
    ({"objectives": [{"metric": "val_accuracy"}, {"metric": "latency_ms"}], "sampler": {"name": "nsgaii"},
      "metric": None, "direction": None},
     "error: confirm: a multi-objective study has a Pareto front, not one winner to confirm"),
    ({"scheduler": {"name": "pbt", "population": 3, "interval": 1}, "n_trials": 3},
     "error: confirm: a population-based member's configuration is its schedule"),
    ({}, "error: study 'tiny' has no complete trial to confirm; run the search first"),
])
def test_what_cannot_be_confirmed_is_refused_in_one_line(workdir, study, says):
    make_study(workdir, study)
    result = run_cli("confirm", "--study", "tiny", cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(says), lines


def test_study_confirm_in_the_space_file_is_checked_by_validate(tmp_path):
    space = merge(TINY_SPACE, {"study": {"confirm": {"top": 2, "seeds": 1}}})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(space))
    result = run_cli("validate", "t.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: study.confirm.seeds: must be at least 2 (one seed has no spread), got 1"
    space["study"]["confirm"]["seeds"] = 3
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(space))
    result = run_cli("validate", "t.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "confirm:\n    top: 2\n    seeds: 3" in result.stdout
