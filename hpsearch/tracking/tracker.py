"""The MLflow side: one experiment per study, one parent run per study, one child run per trial.

A trial's child run is opened when the trial starts, so pruned and failed trials keep their curves.
Per-epoch metrics go out as one `log_batch` per epoch on a background writer thread, so the training
loop never waits on the database; `finish()` drains them before the run is closed. (MLflow's own
`synchronous=False` mode batches on a ~1 s timer, which made closing every run cost a second.)

The tracking server (or its database) may be away for a while. Every write rides that out
(hpsearch.core.outages: backoff up to HPSEARCH_OUTAGE_SECONDS, saying so every few seconds), in order, on the
writer thread; opening a trial's run waits the same way. At exit `drain` waits at most
HPSEARCH_DRAIN_SECONDS with a countdown, then returns what was not delivered — a checkpoint among them
is kept on local disk — so that the run can name it and exit non-zero.
"""

from __future__ import annotations

import io
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# No progress bars from artifact downloads: `best --format json` output must stay parseable.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Outages are ridden out by our own retries, which say that they wait; MLflow's defaults (7 silent
# retries, ~4 minutes per call) would hide them and stall a stop request.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# No "🏃 View run … at: URL" lines per closed run over http (and no extra get_run each time).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from hpsearch.core import locations  # noqa: E402
from hpsearch.core.outages import GaveUp, OutageNotice, first_line, seconds_from_env  # noqa: E402
from hpsearch.search.records import (  # noqa: E402
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
# Where a checkpoint that could not be delivered is kept: <folder>/<run id>/model.pt, under the run's folder.
UNDELIVERED_DIR = locations.UNDELIVERED_DIR

DRAIN_ENV = "HPSEARCH_DRAIN_SECONDS"
DEFAULT_DRAIN_SECONDS = 60.0
T = TypeVar("T")


def drain_seconds() -> float:
    """How long a process waits at exit for its undelivered MLflow writes."""
    return seconds_from_env(DRAIN_ENV, DEFAULT_DRAIN_SECONDS)


# HTTP answers that mean "not now" rather than "never": MLflow's own list of retried codes.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def unreachable(exc: BaseException) -> bool:
    """Whether an MLflow call failed because the server or its database is away (worth retrying)."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import RestException

    if isinstance(exc, sqlalchemy.exc.OperationalError):  # a database-backed store (no server between)
        from hpsearch.storage.db_outages import refusal

        return not refusal(exc)  # a dropped database or a changed password is not waited out
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError)):
        return True
    if isinstance(exc, requests.HTTPError):
        return exc.response is not None and exc.response.status_code in _TRANSIENT_HTTP
    if isinstance(exc, MlflowException):
        if exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        if isinstance(exc, RestException):  # the server answered: an error of its own, such as its database gone
            return exc.get_http_status_code() in _TRANSIENT_HTTP
        text = str(exc)  # how MLflow's REST client words a request that got no answer
        return text.startswith("API request to") and (
            "failed with exception" in text or "failed with timeout" in text
            or any(f"error code {code}" in text for code in _TRANSIENT_HTTP)
        )
    return False


_NOTICE = OutageNotice(
    lambda what, exc, seconds_left: (
        f"MLflow tracking unreachable ({short_reason(exc)}): waiting to deliver {what}; "
        f"giving up in {seconds_left:.0f}s"),
    lambda what, seconds: f"MLflow tracking is back after {seconds:.0f}s ({what} delivered)",
)


def short_reason(exc: BaseException) -> str:
    """Why the store could not be reached, in a few words (requests' own text runs to several hundred)."""
    text = str(exc)
    answered = re.search(r"too many (\d{3}) error responses", text)
    if answered:  # the server is up, its own store is not (MLflow's client retried its 5xx answers)
        return f"the server answered {answered.group(1)}"
    for needle, said in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("Name or service not known", "unknown host"), ("Connection reset", "connection reset"),
                         ("RemoteDisconnected", "connection closed by the server")):
        if needle in text:
            return said
    return first_line(exc)[:200]



def report_outages_to(sink: Callable[[str], None]) -> None:
    """Where this process's "waiting for the tracking store" lines go (a worker sends them to the parent)."""
    _NOTICE.sink = sink


def through_outage(fn: Callable[[], T], what: str, wait_for: float | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> T:
    """`fn()`, retried while the tracking store is unreachable (see hpsearch.core.outages)."""
    return _NOTICE.call(fn, what=what, transient=unreachable, wait_for=wait_for, should_stop=should_stop)

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
    from hpsearch.storage.locks import file_lock

    # Opening the store creates or migrates its tables: processes started together must take turns.
    with file_lock(uri[len("sqlite:///"):] + ".init.lock"):
        return MlflowClient(tracking_uri=uri)


def _params(values: Mapping[str, Any]) -> list[Param]:
    # MLflow params are strings; None becomes "None" so every hyperparameter is visible in the UI.
    return [Param(k, str(v)) for k, v in values.items()]


class StudyTracker:
    """The study-level records: the experiment and the parent run (reused when a study resumes)."""

    def __init__(self, uri: str, experiment: str):
        self.client = through_outage(lambda: client_for(uri), "the connection to the tracking store")
        through_outage(lambda: self._open_experiment(experiment), f"experiment {experiment!r}")

    def _open_experiment(self, experiment: str) -> None:
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
        return through_outage(lambda: self._parent_run(study_name, params), "the study's parent run")

    def _parent_run(self, study_name: str, params: Mapping[str, Any]) -> str:
        run_id = find_parent_run(self.client, self.experiment_id, study_name)
        if run_id:
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
        """Close the study's parent run on the writer thread (drain() delivers it)."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in (best or {}).items()]
        submit("the close of the study's parent run", lambda: close_run(self.client, run_id, "FINISHED",
                                                                          metrics=metrics))


def find_parent_run(client: MlflowClient, experiment_id: str, study_name: str) -> str | None:
    """The id of the study's parent run in the experiment, if it has one."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_STUDY}` = '{study_name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


@dataclass(frozen=True)
class Undelivered:
    """A write that never reached the tracking store: what it was, why, and where a local copy is kept."""

    what: str
    error: str
    kept_at: str | None = None

    def describe(self) -> str:
        kept = f"; kept at {self.kept_at}" if self.kept_at else ""
        return f"{self.what} ({self.error}{kept})"


@dataclass
class _Write:
    what: str  # for messages: "trial 3 epoch 2 metrics"
    run: Callable[[], object]
    # When the write is lost: keep what it carried (returns where) and/or hear why.
    keep: Callable[[], str | None] | None = None
    on_lost: Callable[[str], None] | None = None


class _BackgroundWriter:
    """One daemon thread per process that runs queued MLflow writes in order, off the training path.

    Each write rides out an outage of the tracking store. A write that still fails (the outage
    outlasted HPSEARCH_OUTAGE_SECONDS, the exit deadline passed, or the store refused it) is
    recorded as undelivered, with a local copy of a checkpoint, and shown at once.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[_Write] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._give_up_at: float | None = None
        self._store_down = False  # the last write was lost to an outage after the exit deadline
        self.lost: list[Undelivered] = []

    def submit(self, write: _Write) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hpsearch-mlflow-writer", daemon=True)
                self._thread.start()
        self._queue.put(write)

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def _past_deadline(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _loop(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if self._store_down and self._past_deadline():
                    raise TimeoutError("the tracking store was still unreachable when the run ended")
                through_outage(write.run, write.what, should_stop=self._past_deadline)
                self._store_down = False
            except Exception as exc:  # recorded and shown, never raised: training goes on
                self._store_down = unreachable(exc) or isinstance(exc, (TimeoutError, GaveUp))
                self._lose(write, exc)
            finally:
                self._queue.task_done()

    def _lose(self, write: _Write, exc: Exception) -> None:
        cause = exc.__cause__ if isinstance(exc, GaveUp) and exc.__cause__ is not None else exc
        error = f"tracking store unreachable: {short_reason(cause)}" if unreachable(cause) else first_line(exc)
        kept = None
        if write.keep is not None:
            try:
                kept = write.keep()
            except Exception as keep_error:  # the disk failed too: say so, it is the last copy
                error = f"{error}; keeping a local copy failed too: {first_line(keep_error)}"
        item = Undelivered(write.what, error, kept)
        with self._lock:
            self.lost.append(item)
        if write.on_lost is not None:
            write.on_lost(error)
        else:
            _NOTICE.sink(f"WARNING: not delivered to MLflow: {item.describe()}")

    def wait_idle(self) -> None:
        """Wait until the queued writes are delivered or lost (keeping the lost ones for drain)."""
        self._queue.join()

    def drain(self, seconds: float | None = None,
              on_tick: Callable[[int, float], None] | None = None) -> list[Undelivered]:
        """Wait until every queued write is delivered or lost; returns (and forgets) the lost ones.

        With `seconds`, writes still waiting for the store after that long give up (see _loop), and
        `on_tick(writes left, seconds left)` is called every ~5 s while writes wait.
        """
        if seconds is None:
            self._queue.join()
        else:
            self._give_up_at = time.monotonic() + seconds
            last_tick = time.monotonic()
            try:
                while self.pending():
                    time.sleep(0.05)
                    now = time.monotonic()
                    if on_tick is not None and now - last_tick >= 5.0 and self.pending():
                        last_tick = now
                        on_tick(self.pending(), max(0.0, self._give_up_at - now))
            finally:
                self._give_up_at = None
                self._store_down = False
        with self._lock:
            lost, self.lost = self.lost, []
        return lost


_WRITER = _BackgroundWriter()


def submit(what: str, job: Callable[[], object]) -> None:
    """Queue one MLflow write on this process's writer thread (delivered in order, through outages)."""
    _WRITER.submit(_Write(what, job))


def drain(seconds: float | None = None, on_tick: Callable[[int, float], None] | None = None) -> list[Undelivered]:
    """Wait for this process's queued MLflow writes (a worker does this before exiting).

    Without `seconds`, until all are delivered or lost; returns the lost ones.
    """
    return _WRITER.drain(seconds, on_tick)


def undelivered_checkpoint(run_id: str, name: str = CHECKPOINT_FILE) -> Path:
    """Where a run's checkpoint is kept when it could not be delivered (relative to the run's folder)."""
    return UNDELIVERED_DIR / run_id / name


class TrialRun:
    """One trial's child run. Create with `start`, then `log_epoch` per epoch and `finish` exactly once."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str, label: str = "the run"):
        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self.label = label  # "trial 3", for messages about its writes
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
        """Open the run, waiting through an outage of the tracking store rather than failing the trial."""
        tags = {
            TAG_STUDY: study_name,
            TAG_TRIAL: str(trial_number),
            TAG_ROLE: "trial",
            TAG_STATE: "RUNNING",
            **(extra_tags or {}),
        }
        if parent_run_id:
            tags[TAG_PARENT] = parent_run_id
        label = f"trial {trial_number}"
        # A create whose answer was lost in an outage leaves an empty extra run behind: harmless.
        run = through_outage(
            lambda: client.create_run(experiment_id, run_name=run_name or f"trial-{trial_number}", tags=tags),
            f"the start of {label}'s run",
        )
        self = cls(client, run.info.run_id, run.info.artifact_uri, label)
        through_outage(lambda: client.log_batch(self.run_id, params=_params(params)), f"{label}'s params")
        return self

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        submit(f"{self.label} epoch {epoch} metrics", lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        through_outage(lambda: self.client.log_batch(self.run_id, metrics=batch), f"{self.label}'s metrics")

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
            _save_atomically(state_dict, Path(repo.artifact_dir) / CHECKPOINT_DIR / name)
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
        A checkpoint that cannot be stored is kept on local disk (undelivered_checkpoint), tagged on
        the run and handed to `on_checkpoint_error` (on the writer thread), so that the failure is
        shown, not only recorded.
        """
        if self.finished:
            return
        self.finished = True
        failed: dict[str, str] = {}

        if checkpoint is not None:
            def checkpoint_lost(error: str) -> None:
                failed["error"] = error
                if on_checkpoint_error is not None:
                    on_checkpoint_error(error)

            _WRITER.submit(_Write(
                f"{self.label}'s checkpoint", lambda: self.log_checkpoint(checkpoint),
                keep=lambda: str(_save_atomically(checkpoint, undelivered_checkpoint(self.run_id).resolve())),
                on_lost=checkpoint_lost,
            ))

        def close() -> None:
            tags = {TAG_CHECKPOINT_ERROR: failed["error"][:MAX_TAG_CHARS]} if "error" in failed else {}
            close_run(self.client, self.run_id, status or RUN_STATUS[state], state=state, reason=reason, tags=tags)

        submit(f"the close of {self.label}'s run", close)
        if wait:
            _WRITER.wait_idle()


def _save_atomically(state_dict: Mapping[str, Any], path: Path) -> Path:
    """torch.save to `path` through a temporary name: a reader never sees half a checkpoint."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    buffer = io.BytesIO()  # serialising in memory, then one write, is ~40% faster than torch.save(path)
    torch.save(dict(state_dict), buffer)
    tmp.write_bytes(buffer.getbuffer())
    tmp.replace(path)
    return path


def close_killed_run(uri: str, run_id: str, reason: str) -> None:
    """Close a run whose worker died: the parent does this on the worker's behalf, on its writer thread."""

    def close() -> None:
        client = client_for(uri)
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            if unreachable(exc):
                raise  # retried until the store is back
            return  # no such run: nothing to close
        if run.info.status in ("RUNNING", "SCHEDULED"):
            close_run(client, run_id, "KILLED", state="FAIL", reason=reason)

    submit(f"the close of run {run_id} (its worker died)", close)


def close_stale_runs(uri: str, experiment_id: str, states: Mapping[int, str]) -> int:
    """Close trial runs left RUNNING whose Optuna trial has ended (a worker died mid-write); returns how many.

    Runs in the parent after its workers ended; on an unreachable store it raises, and the caller
    reports the runs as not closed.
    """
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
