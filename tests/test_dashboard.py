"""optuna-dashboard, the live view of a study, reads hpsearch's default storage (the journal file) as
the README says to start it: `optuna-dashboard studies/journal.log --host 127.0.0.1 --port P`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest

from hpsearch.cli.ui import end_tree
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.storage.stores import open_storage

from .support import free_port, wait_for


def _get_json(url: str) -> dict | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.mark.slow
def test_optuna_dashboard_lists_the_study_and_its_trials_from_the_journal(finished_study):
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"  # the console script of this environment
    log = open(finished_study / "dashboard.log", "w")
    proc = subprocess.Popen([str(dashboard), "studies/journal.log", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=finished_study, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        listing = wait_for(lambda: _get_json(api) if proc.poll() is None else {"exited": proc.returncode},
                           60, "optuna-dashboard to answer")
        assert "exited" not in listing, (finished_study / "dashboard.log").read_text()
        studies = {s["study_name"]: s for s in listing["study_summaries"]}
        assert list(studies) == ["finished"]
        detail = _get_json(f"{api}/{studies['finished']['study_id']}")
        assert detail is not None
        assert detail["name"] == "finished"
        study = optuna.load_study(study_name="finished", storage=open_storage(DEFAULT_STORAGE))
        assert [t["number"] for t in detail["trials"]] == [t.number for t in study.trials]
        assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]
    finally:
        end_tree(proc)  # the dashboard and its gunicorn workers
        log.close()
