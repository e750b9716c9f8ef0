"""studies/.last_run.json stays one whole JSON document however many runs finish at once."""

from __future__ import annotations

import json
import multiprocessing

from hpsearch.core.locations import LAST_RUN_FILE
from hpsearch.storage import last_run
from hpsearch.storage.last_run import LastRun

WRITERS = 4
WRITES = 150


def _hammer(index: int) -> None:
    # A long field makes each write take several syscalls, so a shared temporary name would tear.
    last = LastRun(f"study-{index}", None, "sqlite:///mlruns/mlflow.db", f"space-{index}-" + "x" * 200_000)
    for _ in range(WRITES):
        last_run.remember_last_run(last)


def test_runs_finishing_together_never_leave_a_torn_state_file(workdir):
    context = multiprocessing.get_context("fork")  # children inherit the test's folder as their cwd
    writers = [context.Process(target=_hammer, args=(i,)) for i in range(WRITERS)]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        try:
            text = LAST_RUN_FILE.read_text()
        except FileNotFoundError:
            continue  # before the first write lands
        data = json.loads(text)  # raises on a torn or interleaved file
        assert data["space_file"].startswith(f"space-{data['study_name'].split('-')[1]}-")
        reads += 1
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0] * WRITERS
    assert reads > 0
    last = last_run.last_run()
    assert last is not None
    assert last.study_name.startswith("study-")
    # Nothing left behind but the state file itself (each write's temporary name is renamed away).
    assert sorted(p.name for p in LAST_RUN_FILE.parent.iterdir()) == [LAST_RUN_FILE.name]
