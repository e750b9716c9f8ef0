"""Several `hpsearch run` processes on one study (the multi-machine path) end with exactly the budget."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.storage.stores import open_storage

pytestmark = pytest.mark.slow


def run_two_at_once(space, cwd, *extra: str) -> list[subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "hpsearch", "run", str(space), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs share two cores: one thread each
    procs = [subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=False):
        assert p.returncode == 0, out
    return outputs


def assert_exact_budget(storage, n: int) -> None:
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == n, states
    assert TrialState.RUNNING not in states
    assert TrialState.WAITING not in states


def test_two_runs_share_a_postgresql_study(write_space, workdir, postgres_url):
    space = write_space({"study": {"n_trials": 3}, "train": {"epochs": 1}})
    outputs = run_two_at_once(space, workdir, "--storage", postgres_url)
    assert_exact_budget(open_storage(postgres_url), 3)
    assert any("created study" in o for o in outputs)
    # both processes trained: the work was shared, not done twice
    assert all("started" in o for o in outputs), outputs


def test_two_runs_share_the_embedded_journal(write_space, workdir):
    space = write_space({"study": {"n_trials": 3}, "train": {"epochs": 1}})
    run_two_at_once(space, workdir)
    assert_exact_budget(open_storage(str(workdir / "studies" / "journal.log")), 3)
