"""The names hpsearch records under, in one place: Optuna user attributes, study attributes, MLflow tags,
model-version tags, and why a trial failed.

Their values are users' data, read by `status`, `best`, later runs and other tools: never change them.
Nothing here imports anything (the trainer's side and the spec may read them).
"""

from __future__ import annotations

from enum import StrEnum

# ---------------------------------------------------------------- Optuna trial user attributes

ATTR_RUN_ID = "mlflow_run_id"
ATTR_HOST = "hpsearch.host"
ATTR_OWNER_PID = "hpsearch.owner_pid"
ATTR_OWNER_START = "hpsearch.owner_started"
ATTR_WORKER_PID = "hpsearch.worker_pid"
ATTR_SLOT = "hpsearch.slot"  # the device slot that ran it: "cuda:0 #1" (its device, then its slot index)
ATTR_HEARTBEAT = "hpsearch.heartbeat"
ATTR_EPOCHS = "hpsearch.epochs"  # epochs done, where Optuna keeps no intermediate values (multi-objective trials)
ATTR_FAIL_REASON = "fail_reason"
ATTR_FAILURE = "hpsearch.fail_kind"  # a FailureKind value
ATTR_RETRY_OF = "hpsearch.retry_of"
ATTR_RETRY_REASON = "hpsearch.retry_reason"
# True on a COMPLETE trial told before its checkpoint was stored (it is written afterwards, on the
# worker's writer thread): where MLflow lacks it, `best` says why instead of guessing.
ATTR_CHECKPOINT_PENDING = "hpsearch.checkpoint_pending"
# What the trial's network started from: "none", the torchvision weights' name, or "sha256:…" of a weights file
# (engine.models.weights_identity): trials that share it may be averaged into a model soup.
ATTR_START_WEIGHTS = "hpsearch.start_weights"
# A confirmation's retraining (`hpsearch confirm`), in the study <name>-confirm: which configuration it retrains
# (the search's trial number), which of its seeds (1..S) and the training seed that makes it.
CONFIRM_ATTR_PREFIX = "hpsearch.confirm."
ATTR_CONFIRM_OF = "hpsearch.confirm.of_trial"
ATTR_CONFIRM_INDEX = "hpsearch.confirm.seed_index"
ATTR_CONFIRM_SEED = "hpsearch.confirm.seed"
# Population-based training (study.scheduler: pbt), on each member trial. A member stays RUNNING from its first
# epoch to its last, paused between turns on a worker.
ATTR_PBT_MEMBER = "hpsearch.pbt.member"  # True: the trial is a member of the population
ATTR_PBT_EPOCH = "hpsearch.pbt.epoch"  # epochs its latest checkpoint holds: where it resumes
ATTR_PBT_PAUSED = "hpsearch.pbt.paused"  # True while no worker holds it: any run of the study may resume it
# Its exploits, oldest first: [{"epoch": e, "from_trial": donor number, "params": the params it went on with}].
ATTR_PBT_LINEAGE = "hpsearch.pbt.lineage"
# The mutable hyperparameters the weights it holds were trained with, from scratch, one entry per change:
# [{"epoch": first 1-based epoch they apply to, "params": {name: value}}] (a donor's entries up to the exploit,
# then its own): what `best --export` writes as best.yaml's schedule and `hpsearch train` replays.
ATTR_PBT_SCHEDULE = "hpsearch.pbt.schedule"
# Epochs trained and thrown away (a killed worker, an interrupt: trained again from its checkpoint).
ATTR_PBT_RETRIED = "hpsearch.pbt.retried_epochs"

# ---------------------------------------------------------------- Optuna study user attributes

STUDY_SPACE_FILE = "hpsearch.space_file"
STUDY_SPEC = "hpsearch.spec"  # the resolved spec, Spec.to_dict()
STUDY_METRIC = "hpsearch.metric"
STUDY_TRACKING_URI = "hpsearch.tracking_uri"
STUDY_CONFIRMED = "hpsearch.confirmed"  # the last confirmation's result (results/confirmation.py summarize)
STUDY_UNDELIVERED = "hpsearch.undelivered"  # MLflow writes the last run could not deliver: [description]

# ---------------------------------------------------------------- MLflow run tags

TAG_ROLE = "hpsearch.role"  # "study", "trial" or "train"
TAG_STATE = "hpsearch.state"
TAG_FAIL_REASON = "hpsearch.fail_reason"
TAG_CHECKPOINT_ERROR = "hpsearch.checkpoint_error"
TAG_PBT_LINEAGE = "hpsearch.pbt.lineage"  # a member's ATTR_PBT_LINEAGE, as JSON
TAG_PBT_RETRIED = "hpsearch.pbt.retried_epochs"  # a member's ATTR_PBT_RETRIED
TAG_STUDY = "optuna.study_name"
TAG_TRIAL = "optuna.trial_number"
TAG_PARENT = "mlflow.parentRunId"
TAG_SOUP_INGREDIENTS = "hpsearch.soup.ingredients"  # a soup's run: the ingredients it kept, as JSON
TAG_PART_OF = "hpsearch.part_of"  # on a confirmation's parent run: the study it confirms
MAX_TAG_CHARS = 4000

# ---------------------------------------------------------------- MLflow model version tags (`best --register`)

MODEL_TAG_METRIC = "hpsearch.metric"  # the study's metric name
MODEL_TAG_VALUE = "hpsearch.value"  # the winner's value of it


class Ended(StrEnum):
    """How a trial ended, in the words of Optuna's TrialState names: the TAG_STATE of its run, the live view's
    counts, the worker's event. A str, so that the tag and the JSON carry the plain name."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"


# How a trial ended → MLflow run status.
RUN_STATUS = {Ended.COMPLETE: "FINISHED", Ended.PRUNED: "FINISHED", Ended.FAIL: "FAILED", "KILLED": "KILLED"}


class FailureKind(StrEnum):
    """Why a trial failed, kept in ATTR_FAILURE."""

    ERROR = "error"  # an exception in the trial
    NONFINITE = "nonfinite"  # the loss became nan or inf
    OOM = "oom"  # out of memory
    INTERRUPTED = "interrupted"  # the run was stopped (Ctrl-C, SIGTERM)
    KILLED = "killed"  # its worker process died
    REAPED = "reaped"  # its owner was gone, found by a later run


# Failures from outside the trial itself: such a trial is retried with the same parameters (study.RETRIES_ALLOWED).
RETRIED_FAILURES = (FailureKind.KILLED, FailureKind.REAPED, FailureKind.INTERRUPTED)
