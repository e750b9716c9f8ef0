"""The MLflow side: one experiment per study, one parent run per study, one child run per trial.

A trial's child run is opened when the trial starts, so pruned and failed trials keep their curves.
Per-epoch metrics go out as one `log_batch` per epoch on a background writer thread, so the training
loop never waits on the database; `finish()` drains them before the run is closed. (MLflow's own
`synchronous=False` mode batches on a ~1 s timer, which made closing every run cost a second.)
"""

from __future__ import annotations

import io
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# No progress bars from artifact downloads: `best --format json` output must stay parseable.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from hpsearch.records import (  # noqa: E402
    MAX_TAG_CHARS,
    RUN_STATUS,
    TAG_CHECKPOINT_ERROR,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    close_run,
)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "model.pt"

_SQLITE_TUNED = False


def _tune_sqlite() -> None:
    """WAL journal + synchronous=NORMAL on every SQLite connection this process opens.

    WAL lets the workers' writers and the UI's readers proceed without blocking one another, and
    NORMAL skips the fsync per transaction (a power cut may lose the last commits, never corrupt the
    file). Together they cut an MLflow write from ~7 ms to ~1 ms on this class of disk.
    """
    global _SQLITE_TUNED
    if _SQLITE_TUNED:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    _SQLITE_TUNED = True


def prepare_local_store(uri: str) -> None:
    """The SQLite file's folder must exist before MLflow opens it."""
    if uri.startswith("sqlite:///"):
        _tune_sqlite()
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def resolve_uri(uri: str) -> str:
    """A relative SQLite URI made absolute against the current folder.

    MLflow caches one store per URI string for the life of the process: a relative path would keep
    pointing at the folder where it was first opened.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def client_for(uri: str) -> MlflowClient:
    uri = resolve_uri(uri)
    prepare_local_store(uri)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    from hpsearch.locks import file_lock

    # Opening the store creates or migrates its tables: processes started together must take turns.
    with file_lock(uri[len("sqlite:///"):] + ".init.lock"):
        return MlflowClient(tracking_uri=uri)


def _params(values: Mapping[str, Any]) -> list[Param]:
    # MLflow params are strings; None becomes "None" so every hyperparameter is visible in the UI.
    return [Param(k, str(v)) for k, v in values.items()]


class StudyTracker:
    """The study-level records: the experiment and the parent run (reused when a study resumes)."""

    def __init__(self, uri: str, experiment: str):
        self.client = client_for(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # another process created it a moment ago
                created = self.client.get_experiment_by_name(experiment)
                if created is None:
                    raise
                self.experiment_id = created.experiment_id
        else:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            self.experiment_id = found.experiment_id

    def parent_run(self, study_name: str, params: Mapping[str, Any]) -> str:
        """The study's parent run id, created the first time, reopened on resume."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_STUDY}` = '{study_name}'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=study_name,
            tags={TAG_ROLE: "study", TAG_STUDY: study_name},
        )
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def close_parent(self, run_id: str, best: Mapping[str, Any] | None) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in (best or {}).items()]
        close_run(self.client, run_id, "FINISHED", metrics=metrics)


class _BackgroundWriter:
    """One daemon thread per process that runs queued MLflow writes in order, off the training path."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hpsearch-mlflow-writer", daemon=True)
                self._thread.start()
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception as exc:  # a lost metric point must not turn a finished trial into a failure
                import logging

                logging.getLogger("hpsearch").warning("MLflow write failed: %s", exc)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        self._queue.join()


_WRITER = _BackgroundWriter()


def drain() -> None:
    """Wait until every queued MLflow write of this process is done (a worker does this before exiting)."""
    _WRITER.drain()



class TrialRun:
    """One trial's child run. Create with `start`, then `log_epoch` per epoch and `finish` exactly once."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str):
        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self.finished = False

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str | None,
        study_name: str,
        trial_number: int,
        params: Mapping[str, Any],
        run_name: str | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> TrialRun:
        tags = {
            TAG_STUDY: study_name,
            TAG_TRIAL: str(trial_number),
            TAG_ROLE: "trial",
            TAG_STATE: "RUNNING",
            **(extra_tags or {}),
        }
        if parent_run_id:
            tags[TAG_PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name or f"trial-{trial_number}", tags=tags)
        self = cls(client, run.info.run_id, run.info.artifact_uri)
        client.log_batch(self.run_id, params=_params(params))
        return self

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        _WRITER.submit(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_checkpoint(self, state_dict: Mapping[str, Any], name: str = CHECKPOINT_FILE) -> None:
        import torch  # only the worker that trains has weights to save
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        # The run's artifact URI is known since start: skip the get_run that log_artifact would do.
        # The repository is resolved against this run's tracking URI, not the process's default one:
        # an `mlflow-artifacts:` URI (a tracking server with --artifacts-destination) needs the server.
        repo = get_artifact_repository(self.artifact_uri, tracking_uri=self.client.tracking_uri)
        if isinstance(repo, LocalArtifactRepository):
            # Local store: write the file where it belongs instead of writing it and copying it.
            folder = Path(repo.artifact_dir) / CHECKPOINT_DIR
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.partial"
            buffer = io.BytesIO()  # serialising in memory, then one write, is ~40% faster than torch.save(path)
            torch.save(dict(state_dict), buffer)
            tmp.write_bytes(buffer.getbuffer())
            tmp.replace(folder / name)
            return
        with tempfile.TemporaryDirectory() as tmp_dir:
            path = os.path.join(tmp_dir, name)
            torch.save(dict(state_dict), path)
            repo.log_artifact(path, CHECKPOINT_DIR)

    def finish(self, state: str, reason: str | None = None, status: str | None = None,
               checkpoint: Mapping[str, Any] | None = None, wait: bool = True,
               on_checkpoint_error: Callable[[str], None] | None = None) -> None:
        """Log the checkpoint (if any), tag the final state and close the run, exactly once.

        With wait=False this happens on the writer thread, after the queued metrics: the worker tells
        Optuna and starts its next trial meanwhile (the checkpoint write is the largest per-trial cost).
        A checkpoint that cannot be stored is tagged on the run and handed to `on_checkpoint_error`
        (on the writer thread), so that the failure is shown, not only recorded.
        """
        if self.finished:
            return
        self.finished = True

        def close() -> None:
            tags = {}
            error = None
            if checkpoint is not None:
                try:
                    self.log_checkpoint(checkpoint)
                except Exception as exc:
                    error = str(exc).strip() or type(exc).__name__
                    tags[TAG_CHECKPOINT_ERROR] = error[:MAX_TAG_CHARS]
            try:
                close_run(self.client, self.run_id, status or RUN_STATUS[state], state=state, reason=reason,
                          tags=tags)
            finally:  # the failure is reported even when the run could not be closed either
                if error is not None and on_checkpoint_error is not None:
                    on_checkpoint_error(error)

        _WRITER.submit(close)
        if wait:
            _WRITER.drain()


def close_killed_run(uri: str, run_id: str, reason: str) -> None:
    """Close a run whose worker died: the parent process does this on the worker's behalf."""
    client = client_for(uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        return
    if run.info.status in ("RUNNING", "SCHEDULED"):
        close_run(client, run_id, "KILLED", state="FAIL", reason=reason)


def close_stale_runs(uri: str, experiment_id: str, states: Mapping[int, str]) -> int:
    """Close trial runs left RUNNING whose Optuna trial has ended (a worker died mid-write); returns how many."""
    client = client_for(uri)
    closed = 0
    running_trials = f"tags.`{TAG_ROLE}` = 'trial' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], filter_string=running_trials):
        number = run.data.tags.get(TAG_TRIAL)
        state = states.get(int(number)) if number and number.lstrip("-").isdigit() else None
        if state in RUN_STATUS:
            close_run(client, run.info.run_id, "KILLED" if state == "FAIL" else RUN_STATUS[state], state=state)
            closed += 1
    return closed


def checkpoint_uri(client: MlflowClient, run_id: str) -> str | None:
    """The URI of a run's best-epoch checkpoint, or None when it logged none."""
    try:
        files = client.list_artifacts(run_id, CHECKPOINT_DIR)
    except Exception:
        return None
    if not any(f.path.endswith(CHECKPOINT_FILE) for f in files):
        return None
    return f"{client.get_run(run_id).info.artifact_uri}/{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"


def download_checkpoint(uri: str, run_id: str, dest: str, name: str = CHECKPOINT_FILE) -> str:
    from mlflow.artifacts import download_artifacts

    return download_artifacts(
        run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{name}", dst_path=dest, tracking_uri=resolve_uri(uri)
    )
