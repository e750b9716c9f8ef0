"""The Optuna side: storage, create or resume a study, budget counting, and reaping orphaned trials.

The embedded default is one Optuna journal file under `studies/` (safe for several local processes,
readable by `optuna trials --storage studies/journal.log`); `--storage URL` selects any Optuna RDB URL
(PostgreSQL for several machines) or `redis://` journal.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core.credentials import mask_url, redact
from hpsearch.core.errors import RunFailure, UsageError
from hpsearch.core.locations import DEFAULT_STORAGE, LAST_RUN_FILE, STUDIES_DIR  # noqa: F401  (re-exported)
from hpsearch.search import records
from hpsearch.search.records import (
    ATTR_HEARTBEAT,
    ATTR_HOST,
    ATTR_OWNER_PID,
    ATTR_OWNER_START,
    ATTR_RETRY_OF,
    ATTR_RETRY_REASON,
    FailureKind,
)
from hpsearch.storage.db_outages import OutageProofStorage, cause_line, connect_args, through_db_outage
from hpsearch.storage.locks import LOCK_TIMEOUT_SECONDS, file_lock, postgres_lock

if TYPE_CHECKING:
    from hpsearch.spec.study_spec import Spec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_dir(name: str, *parts: str) -> Path:
    """studies/<name>/<parts>: refused (UsageError) unless it resolves inside studies/.

    The name is checked when it is read (checks.study_name); this also catches a studies/<name>
    that is a link pointing elsewhere, so that report, export and compress never write outside.
    """
    path = STUDIES_DIR / name / Path(*parts)
    root = STUDIES_DIR.resolve()
    if not path.resolve().is_relative_to(root):
        raise UsageError(f"study {name!r}: its folder {path} resolves to {path.resolve()}, outside {root}")
    return path


def open_storage(url: str | None) -> BaseStorage:
    """An Optuna storage for a URL, a journal file path, or None (the embedded default)."""
    url = url or DEFAULT_STORAGE
    if url.startswith("redis://") or url.startswith("rediss://"):
        from optuna.storages.journal import JournalRedisBackend

        return optuna.storages.JournalStorage(JournalRedisBackend(url))
    if "://" in url:
        # Machines started together on an empty database would race to create Optuna's tables.
        with budget_lock(url, "schema"):
            # Pool pre-ping replaces connections that died with a restarted server; the wrapper
            # retries the calls that meet the server down (see db_outages); connect_args bound each
            # connection attempt, so that one to a host that drops packets does not hang.
            engine_kwargs = {"pool_pre_ping": True, "connect_args": connect_args(url)}
            rdb = through_db_outage(
                lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs),
                f"study storage {mask_url(url)}",
            )
        return OutageProofStorage(rdb, url)
    path = Path(url).resolve()  # absolute: a later chdir must not move the study
    path.parent.mkdir(parents=True, exist_ok=True)
    return _open_journal(path, shown=url)


def _open_journal(path: Path, shown: str) -> BaseStorage:
    """The journal at `path`, its torn tail (if any) set aside first; `shown` is how messages name it."""
    lock = _MendingJournalLock(path, shown)
    # Optuna's replay would skip a torn tail silently, but then readers (status, best) would never
    # repair it: take the lock once now, which sets it aside.
    lock.acquire()
    lock.release()
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except Exception as exc:  # Optuna replays the whole file here: one bad line makes the study unreadable
        raise RunFailure(journal_damage(path, shown, exc)) from exc


class _MendingJournalLock(JournalFileOpenLock):
    """Optuna's journal lock that, once held, sets aside a torn tail (see set_aside_torn_tail).

    The open(O_EXCL) lock works on every filesystem, NFS included, unlike symlinks on some mounts.
    Optuna holds it for every append, so a tail torn by another process (killed, disk full) while
    this one runs on is cut before our next record would be glued onto it, not only on open.
    """

    def __init__(self, path: Path, shown: str):
        super().__init__(str(path))
        self.path = path
        self.shown = shown

    def acquire(self) -> bool:
        held = super().acquire()
        try:
            moved = set_aside_torn_tail(self.path)
        except BaseException:
            self.release()
            raise
        if moved:
            print(f"warning: {self.shown} ended in a torn record ({moved} bytes without their newline: a crash "
                  f"or full disk mid-write); moved them to {self.shown}{TORN_SUFFIX}", file=sys.stderr)
        return held


TORN_SUFFIX = ".torn"
_TAIL_CHUNK = 1 << 16


def set_aside_torn_tail(path: Path) -> int:
    """Move a last line that lacks its newline to `<journal>.torn`; returns how many bytes moved (0: none).

    A crash or a full disk in the middle of an append leaves such a tail. Optuna skips it, but the
    next append is glued onto it and that merged line fails to parse from then on, so every later
    open of the study fails. Call with the journal's lock held. Each tear is appended to the .torn
    file as one line, which is never truncated: the bytes are kept for whoever investigates.
    A tail that is a whole record (the write was cut just before its newline) is kept instead: its
    newline is added, and the trial it finished stays finished.
    """
    try:
        journal = open(path, "r+b")
    except FileNotFoundError:
        return 0
    with journal:
        size = journal.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        journal.seek(size - 1)
        if journal.read(1) == b"\n":
            return 0
        start = size  # find where the torn line begins: just after the last newline, reading backwards
        while start > 0:
            chunk_start = max(0, start - _TAIL_CHUNK)
            journal.seek(chunk_start)
            newline = journal.read(start - chunk_start).rfind(b"\n")
            if newline >= 0:
                start = chunk_start + newline + 1
                break
            start = chunk_start
        journal.seek(start)
        torn = journal.read()
        if _whole_record(torn):
            journal.write(b"\n")  # the read left the file position at its end
            journal.flush()
            os.fsync(journal.fileno())
            return 0
        # Keep the bytes durably before cutting them: a crash in between leaves a copy, never a loss.
        with open(path.with_name(path.name + TORN_SUFFIX), "ab") as kept:
            kept.write(torn + b"\n")
            kept.flush()
            os.fsync(kept.fileno())
        journal.truncate(start)
        journal.flush()
        os.fsync(journal.fileno())
    return len(torn)


def _whole_record(line: bytes) -> bool:
    # Optuna writes each record as one JSON object: no proper prefix of one parses as an object.
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # UnicodeDecodeError included
        return False


def journal_damage(path: Path, shown: str, exc: Exception) -> str:
    """One line naming the journal and its first line that is not a JSON record (or, failing that, the error)."""
    try:
        with open(path, "rb") as journal:
            for number, line in enumerate(journal, start=1):
                try:
                    json.loads(line)
                except ValueError as bad:
                    return (f"{shown} line {number} is not a valid journal record ({bad}); the study cannot be "
                            "read until that line is repaired or removed")
    except OSError as unreadable:
        return f"{shown} cannot be read: {unreadable}"
    return f"{shown} cannot be replayed: {type(exc).__name__}: {exc}"


def storage_label(url: str | None) -> str:
    """The storage as hpsearch may show it: its password masked."""
    return mask_url(url) or DEFAULT_STORAGE


def load_existing_study(name: str, storage_url: str | None) -> optuna.Study:
    """The study `name` in the storage (UsageError when it has none); a storage that never answers fails fast."""
    from hpsearch.storage.store_probe import check_storage

    check_storage(storage_url)
    storage = open_storage(storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        hint = f"; studies there: {', '.join(sorted(names))}" if names else "; it holds no study yet"
        raise UsageError(f"--study: no study named {name!r} in {storage_label(storage_url)}{hint}")
    return optuna.load_study(study_name=name, storage=storage)


def create_or_resume(spec: Spec, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
                     storage_url: str | None) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists (resume). Returns (study, resumed)."""
    storage = open_storage(storage_url)
    directions = [o.direction for o in spec.study.targets]
    try:
        study = optuna.load_study(study_name=spec.study.name, storage=storage, sampler=sampler, pruner=pruner)
        resumed = True
    except KeyError:
        try:
            study = optuna.create_study(
                study_name=spec.study.name, storage=storage, sampler=sampler, pruner=pruner, directions=directions
            )
            resumed = False
        except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago
            study = optuna.load_study(study_name=spec.study.name, storage=storage, sampler=sampler, pruner=pruner)
            resumed = True
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        field = "study.objectives" if spec.study.multi or len(existing) > 1 else "study.direction"
        raise UsageError(f"{field}: study {spec.study.name!r} already exists with direction(s) "
                         f"{', '.join(existing)}, the file says {', '.join(directions)}")
    metrics = [o.metric for o in spec.study.targets]
    if spec.study.multi and study.metric_names != metrics:
        if study.metric_names is not None:
            raise UsageError(f"study.objectives: study {spec.study.name!r} already exists with objectives "
                             f"{', '.join(study.metric_names)}, the file says {', '.join(metrics)}")
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metrics)  # Optuna's own record: its dashboard and dataframes name the values
    # Record what made the study, so `status`/`best`/export can rebuild it without the file.
    study.set_user_attr(records.STUDY_SPACE_FILE, spec.source)
    study.set_user_attr(records.STUDY_SPEC, spec.to_dict())
    study.set_user_attr(records.STUDY_METRIC, spec.study.metric)
    return study, resumed


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """A multi-objective study's complete trials that no other beats in every objective, by trial number
    (Optuna's best_trials; for one objective, the best trial)."""
    if not count_states(study)[TrialState.COMPLETE]:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


@contextmanager
def budget_lock(storage_url: str | None, study_name: str, should_stop: Callable[[], bool] | None = None,
                timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Make "count the finished and running trials, then ask one more" atomic across processes.

    Several `hpsearch run` processes (on one machine, or on several sharing PostgreSQL) may work on
    one study; without this, two of them can both see one trial left and both start it. Journal
    files use a lock file beside the journal; PostgreSQL an advisory lock keyed by the study name.
    Other storages (SQLite, MySQL, Redis) run unlocked: at worst one trial over the budget per
    extra process.

    The wait is interruptible: Ctrl-C, or `should_stop()` turning true (locks.LockWaitAborted), ends
    it; after `timeout` seconds locks.LockTimeout names the lock. A PostgreSQL outage while waiting
    is waited out; one while holding ends the lock with its session (see locks.postgres_lock).
    """
    url = storage_url or DEFAULT_STORAGE
    if "://" not in url:
        with file_lock(Path(url).resolve().with_suffix(f".{study_name}.lock"), timeout, should_stop):
            yield
    elif url.startswith("postgresql"):
        with postgres_lock(url, study_name, timeout, should_stop):
            yield
    else:
        yield


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


# ---- ownership: who is running a trial, so a later run can reap what a dead process left RUNNING ----


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (None if there is no such process): a pid plus this names one process."""
    try:
        import psutil
    except ImportError:  # psutil is a dependency; without it, existence is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def owner_attrs() -> dict[str, Any]:
    pid = os.getpid()
    return {ATTR_HOST: socket.gethostname(), ATTR_OWNER_PID: pid, ATTR_OWNER_START: process_start_time(pid)}


HEARTBEAT_SECONDS = 30.0
# A trial owned by another machine is presumed dead when its owner has not beaten for this long.
STALE_AFTER_SECONDS = 600.0


def owner_is_alive(trial: FrozenTrial, now: float | None = None) -> bool:
    """Whether the process that owns a RUNNING trial is still there.

    On this host: the owner's pid exists and started when recorded (a recycled pid does not count).
    On another host we cannot look at processes: the owner beats a heartbeat into the trial every
    HEARTBEAT_SECONDS, and a trial whose heartbeat is older than STALE_AFTER_SECONDS is orphaned.
    """
    attrs = trial.user_attrs
    if ATTR_HOST not in attrs:
        # Owners are recorded right after `ask`; give a trial that young the benefit of the doubt.
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return (now or time.time()) - started < 60.0
    if attrs[ATTR_HOST] != socket.gethostname():
        last = attrs.get(ATTR_HEARTBEAT)
        if last is None and trial.datetime_start is not None:
            last = trial.datetime_start.timestamp()
        return last is not None and (now or time.time()) - last < STALE_AFTER_SECONDS
    pid = attrs.get(ATTR_OWNER_PID)
    if not isinstance(pid, int):
        return False
    owner_started = process_start_time(pid)
    if owner_started is None:
        return False
    recorded = attrs.get(ATTR_OWNER_START)
    return recorded is None or abs(owner_started - recorded) < 1.0


def beat(study: optuna.Study, trial_ids: Iterable[int]) -> None:
    """Record that this process still owns these RUNNING trials (read by other machines).

    Never raises: a database outage is waited out by the storage, and one that outlasts that is
    reported here and tried again at the next beat (the trials stay ours meanwhile).
    """
    now = time.time()
    for trial_id in trial_ids:
        try:
            records.set_trial_attr(study, trial_id, ATTR_HEARTBEAT, now)
        except (RuntimeError, ValueError):
            pass  # finished meanwhile
        except Exception as exc:
            print(redact(f"warning: could not record the heartbeat of our running trials: {type(exc).__name__}: "
                         f"{cause_line(exc)}"), file=sys.stderr)
            return


def reap_orphans(study: optuna.Study) -> list[FrozenTrial]:
    """Mark FAIL every RUNNING trial whose owner is gone (see owner_is_alive); returns them."""
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_is_alive(t):
            records.fail_trial(study, t, "its worker process was gone (found by a later run)", FailureKind.REAPED)
            reaped.append(t)
    return reaped


_ITS_OWN = "its own"
# How many times a configuration is retried after attempts that failed this way (None: until it has run).
RETRIES_ALLOWED: dict[str, int | None] = {
    # The user stopped the run: that says nothing about the configuration.
    FailureKind.INTERRUPTED: None,
    # The run died around it (kill -9, a reboot); a few, for one that takes its whole run down each time.
    FailureKind.REAPED: 3,
    # Any other way (its worker killed, out of memory beside neighbours) may be its own doing: once in all.
    _ITS_OWN: 1,
}


def _configuration(trial: FrozenTrial) -> int:
    """The trial whose configuration `trial` runs: itself, or the first one a retry retries."""
    return trial.user_attrs.get(ATTR_RETRY_OF, trial.number)


def _failure_class(trial: FrozenTrial) -> str:
    kind = trial.user_attrs.get(records.ATTR_FAILURE)
    return kind if kind in RETRIES_ALLOWED else _ITS_OWN


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> bool:
    """Enqueue a retry of a failed trial with the same parameters, unless its configuration is done with.

    A configuration's attempts are read from the study (a finished trial is immutable): its first trial and
    every retry, which carries the first one's number (ATTR_RETRY_OF) and why it was made (ATTR_RETRY_REASON).
    Only the last attempt is retried, and only while each way its attempts failed is within RETRIES_ALLOWED:
    a retry interrupted in turn is retried again, until the configuration has really run.
    """
    first = _configuration(trial)
    attempts = [t for t in study.get_trials(deepcopy=False) if _configuration(t) == first]
    if any(t.number > trial.number for t in attempts):
        return False
    failures = Counter(_failure_class(t) for t in attempts if t.state == TrialState.FAIL)
    if any(allowed is not None and failures[kind] > allowed for kind, allowed in RETRIES_ALLOWED.items()):
        return False
    attrs: dict[str, Any] = {ATTR_RETRY_OF: first}
    if reason:
        attrs[ATTR_RETRY_REASON] = reason
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    return True


def retry_candidates(study: optuna.Study) -> list[FrozenTrial]:
    """FAIL trials that died for reasons outside the trial itself (killed, reaped, interrupted), each the last
    attempt at its configuration (enqueue_retry decides whether it has retries left)."""
    trials = study.get_trials(deepcopy=False)
    last = {_configuration(t): t.number for t in sorted(trials, key=lambda t: t.number)}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get(records.ATTR_FAILURE) in records.RETRIED_FAILURES
        and last[_configuration(t)] == t.number
    ]


# ---- the study most recently run from this folder ----


@dataclass
class LastRun:
    study_name: str
    storage: str | None
    tracking_uri: str
    space_file: str | None


def remember_last_run(last: LastRun) -> None:
    STUDIES_DIR.mkdir(exist_ok=True)
    # A name of its own in the same folder, then an atomic rename: two runs finishing together each
    # replace the whole file, so a reader sees one of them complete, never a torn or mixed file.
    fd, tmp = tempfile.mkstemp(dir=STUDIES_DIR, prefix=".last_run.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(last.__dict__ | {"time": time.time()}, indent=2))
        os.replace(tmp, LAST_RUN_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def last_run() -> LastRun | None:
    """The study last run from this folder; None when no file says so or it does not read as one.

    A broken file counts as absent, never as an error: it is only a pointer that the next run rewrites,
    and it must not stop `--study NAME` or `ui`, which merely consult it.
    """
    try:
        data = json.loads(LAST_RUN_FILE.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    name, storage, uri, space = (data.get(k) for k in ("study_name", "storage", "tracking_uri", "space_file"))
    if not (isinstance(name, str) and isinstance(uri, str)) or not all(v is None or isinstance(v, str)
                                                                        for v in (storage, space)):
        return None
    return LastRun(name, storage, uri, space)
