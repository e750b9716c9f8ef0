"""The study storage: open it (the embedded journal file under `studies/` by default, any Optuna RDB URL, or a
`redis://` journal), and create, resume or load a study in it.

The journal file is safe for several local processes and readable by `optuna trials --storage studies/journal.log`;
PostgreSQL serves several machines.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend

from hpsearch.core import record_keys
from hpsearch.core.credentials import mask_url
from hpsearch.core.db_errors import connect_args
from hpsearch.core.errors import RunFailure, UsageError
from hpsearch.core.locations import DEFAULT_STORAGE, STUDIES_DIR
from hpsearch.storage.db_outages import OutageProofStorage, through_db_outage

if TYPE_CHECKING:
    from hpsearch.spec.spec_types import Spec
from hpsearch.storage.journal import _MendingJournalLock, journal_damage
from hpsearch.storage.locks import budget_lock


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


def storage_label(url: str | None) -> str:
    """The storage as hpsearch may show it: its password masked."""
    return mask_url(url) or DEFAULT_STORAGE


def load_existing_study(name: str, storage_url: str | None) -> optuna.Study:
    """The study `name` in the storage (UsageError when it has none); a storage that never answers fails fast."""
    from hpsearch.storage.probe import check_storage

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
    study.set_user_attr(record_keys.STUDY_SPACE_FILE, spec.source)
    study.set_user_attr(record_keys.STUDY_SPEC, spec.to_dict())
    study.set_user_attr(record_keys.STUDY_METRIC, spec.study.metric)
    return study, resumed
