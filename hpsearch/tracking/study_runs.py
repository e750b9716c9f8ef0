"""The MLflow runs of a study: the parent run, one nested run per trial (params, per-epoch metrics, the best
checkpoint), and closing them in the state their trial ended in.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from hpsearch.core.credentials import redact
from hpsearch.core.record_keys import (
    MAX_TAG_CHARS,
    RUN_STATUS,
    TAG_CHECKPOINT_ERROR,
    TAG_PARENT,
    TAG_PART_OF,
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric
from hpsearch.core.record_keys import TAG_FAIL_REASON, Ended
from hpsearch.engine.torch_files import save_atomically
from hpsearch.tracking.background_writer import _WRITER, _Write, submit, undelivered_checkpoint
from hpsearch.tracking.checkpoints import CHECKPOINT_DIR, CHECKPOINT_FILE
from hpsearch.tracking.mlflow_client import client_for, through_outage, unreachable


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

    def nested_study_run(self, study_name: str, parent_study: str, run_name: str) -> str:
        """The parent run of a study that belongs to another (a confirmation's), nested in that one's parent run:
        created once, found again by `parent_run` as any study's is."""
        def find_or_create() -> str:
            found = find_parent_run(self.client, self.experiment_id, study_name)
            if found:
                return found
            tags = {TAG_ROLE: "study", TAG_STUDY: study_name, TAG_PART_OF: parent_study}
            parent = find_parent_run(self.client, self.experiment_id, parent_study)
            if parent:
                tags[TAG_PARENT] = parent
            return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

        return through_outage(find_or_create, f"the {run_name} run")

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

    @classmethod
    def reopen(cls, client: MlflowClient, run_id: str, trial_number: int) -> TrialRun:
        """A run started earlier and left open: a population member's, going on in another turn or process."""
        run = through_outage(lambda: client.get_run(run_id), f"trial {trial_number}'s run")
        return cls(client, run_id, run.info.artifact_uri, f"trial {trial_number}")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags written on the writer thread, in order with the metrics (a member's lineage, its state)."""
        def write() -> None:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value[:MAX_TAG_CHARS])

        submit(f"{self.label}'s tags", write)

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
            save_atomically(dict(state_dict), Path(repo.artifact_dir) / CHECKPOINT_DIR / name)
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
                keep=lambda: str(save_atomically(dict(checkpoint), undelivered_checkpoint(self.run_id).resolve())),
                on_lost=checkpoint_lost,
            ))

        def close() -> None:
            tags = {TAG_CHECKPOINT_ERROR: failed["error"][:MAX_TAG_CHARS]} if "error" in failed else {}
            close_run(self.client, self.run_id, status or RUN_STATUS[state], state=state, reason=reason, tags=tags)

        submit(f"the close of {self.label}'s run", close)
        if wait:
            _WRITER.wait_idle()


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
            close_run(client, run_id, "KILLED", state=Ended.FAIL, reason=reason)

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
            close_run(client, run.info.run_id, "KILLED" if state == Ended.FAIL else RUN_STATUS[state], state=state)
            closed += 1
    return closed


def close_run(client: MlflowClient, run_id: str, status: str, state: str | None = None, reason: str | None = None,
              tags: Mapping[str, str] | None = None, metrics: Sequence[Metric] = ()) -> None:
    """Close an MLflow run with `status`: tag the trial `state` it ended in, why it failed, any other
    `tags`, and log last `metrics`. Every run hpsearch ends goes through here."""
    from mlflow.entities import RunTag

    # Tag values may quote errors that quote store URLs (a checkpoint error, a fail reason).
    run_tags = [RunTag(k, redact(v)) for k, v in (tags or {}).items()]
    if state is not None:
        run_tags.append(RunTag(TAG_STATE, state))
    if reason:
        run_tags.append(RunTag(TAG_FAIL_REASON, redact(reason)[:MAX_TAG_CHARS]))
    if run_tags or metrics:
        client.log_batch(run_id, metrics=list(metrics), tags=run_tags)
    client.set_terminated(run_id, status)
