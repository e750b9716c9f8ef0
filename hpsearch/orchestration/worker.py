"""A worker process: one per device slot. It loads the dataset once, then runs trials the parent assigns it
until told to stop, sending typed events (orchestration.events) to the parent; it exits when its parent dies.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.core.hparams import TASK_CHOICES
from hpsearch.orchestration.devices import Slot
from hpsearch.orchestration.events import (
    StoreNotice,
    WorkerFatal,
    WorkerFree,
    WorkerReady,
    WorkerRetiring,
    WritesLost,
    WritesPending,
)
from hpsearch.spec.spec_types import Spec
from hpsearch.spec.study_spec import with_task_choices
from hpsearch.storage import db_outages, stores
from hpsearch.tracking import background_writer, mlflow_client

if TYPE_CHECKING:
    from hpsearch.orchestration.objective import TrialContext

# ------------------------------------------------------------------------------------------ worker


def worker_main(slot: Slot, spec: Spec, storage_url: str | None, tracking_uri: str, experiment_id: str,
                parent_run_id: str, tasks: Any, events: Any) -> None:
    """Entry point of a worker process: set up once, then train trial after trial until told to stop.

    `spec` was validated by the parent; `tasks` brings trial ids (None: stop), `events` takes
    (slot index, WorkerEvent) to the parent.
    """
    from hpsearch.core.interrupts import Interrupted
    from hpsearch.orchestration.member import run_member_turn
    from hpsearch.orchestration.objective import run_trial

    parent = os.getppid()
    _set_up_process(slot, parent, events)
    try:
        from hpsearch.engine.train import graphs_disabled_reason

        context = _trial_context(slot, spec, storage_url, tracking_uri, experiment_id, parent_run_id, events)
        message = _warm_up(spec, context.device)
        if message:
            context.on_event(WorkerFatal(message))
            return
        # Everything alive now (libraries, the dataset) lives as long as the worker: move it out of
        # the collector's sight, so the collection after each trial scans only that trial's objects
        # (~600k objects, 0.35 s a trial, otherwise).
        gc.freeze()
        context.on_event(WorkerReady())
        held = None  # a population member kept in memory between its turns (orchestration/member.py)
        while True:
            trial_id = _next_task(tasks, parent)
            if trial_id is None:
                break
            if spec.study.scheduler is not None:
                outcome, held = run_member_turn(context, trial_id, held)
            else:
                outcome = run_trial(context, trial_id)
            context.on_event(WorkerFree(outcome.number))
            broken = graphs_disabled_reason()
            if broken:
                # A failed CUDA graph capture can leave the CUDA context degraded for the process's
                # life: hand the slot to a fresh process instead of training on in this one.
                context.on_event(WorkerRetiring(f"CUDA graph capture failed ({broken})"))
                break
    except (Interrupted, KeyboardInterrupt):
        pass
    finally:
        # Runs closed on the writer thread are closed before the worker exits; through an outage of
        # the tracking store it waits a while, counting down, then names what it could not deliver.
        lost = background_writer.drain(background_writer.drain_seconds(),
                              on_tick=lambda count, left: events.put((slot.index, WritesPending(count, left))))
        if lost:
            events.put((slot.index, WritesLost([item.describe() for item in lost])))


PARENT_CHECK_SECONDS = 2.0

def _set_up_process(slot: Slot, parent: int, events: Any) -> None:
    """Signals, quiet libraries, where outage lines go, and the slot's share of the machine."""
    from hpsearch.core.interrupts import GUARD

    # Ctrl-C in a terminal reaches the whole process group: the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: GUARD.request())
    # Workers are not daemons (a daemon may not start the DataLoader processes that decode image
    # folders), so nothing ends them with the parent by itself: if the parent dies, even by SIGKILL,
    # the kernel sends SIGTERM, which fails the trial in hand cleanly.
    _term_when_parent_dies(parent)
    from hpsearch.orchestration.quiet_libraries import quiet_libraries

    quiet_libraries()
    # "Waiting for the tracking server / the database" lines are shown by the parent, above its live view.
    mlflow_client.report_outages_to(lambda text: events.put((slot.index, StoreNotice(text))))
    db_outages.report_outages_to(lambda text: events.put((slot.index, StoreNotice(text))))
    import torch

    if slot.threads:
        torch.set_num_threads(slot.threads)
    if slot.memory_fraction and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(slot.memory_fraction, 0)


def _trial_context(slot: Slot, spec: Spec, storage_url: str | None, tracking_uri: str, experiment_id: str,
                   parent_run_id: str, events: Any) -> TrialContext:
    """The study (with this worker's own sampler and pruner) and the MLflow client every trial here uses."""
    from hpsearch.orchestration.objective import TrialContext
    from hpsearch.search.samplers import build_pruner, study_sampler

    # Seeded per trial number (search/trial_sampler.py): the same draws whichever worker runs a trial.
    sampler = study_sampler(spec.study.sampler, spec.search_space, spec.study.n_trials)
    study = optuna.load_study(
        study_name=spec.study.name,
        storage=stores.open_storage(storage_url),
        sampler=sampler,
        pruner=build_pruner(spec.study.pruner),
    )
    return TrialContext(
        spec=spec,
        study=study,
        client=mlflow_client.client_for(tracking_uri),
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        device="cpu" if slot.gpu is None else "cuda",
        on_event=lambda event: events.put((slot.index, event)),
    )



def _next_task(tasks: Any, parent: int) -> int | None:
    """The next trial id from the parent; None when told to stop or when the parent is gone."""
    while True:
        try:
            return tasks.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # re-parented: the orchestrator died (where no death signal came)
                return None


def _term_when_parent_dies(parent: int) -> None:
    """Ask Linux for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG); elsewhere _next_task polls."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _warm_up(spec: Spec, device: str) -> str | None:
    """Load the dataset onto the device and check the weights once, before the first trial.

    A missing dataset or weights file would fail every trial the same way: report it once instead.
    """
    from hpsearch.engine.datasets import DatasetNotFound
    from hpsearch.engine.models import WeightsNotAvailable, build_model
    from hpsearch.orchestration.builders import load_task_data

    searched = {k: spec.search_space[k].options for k in TASK_CHOICES if k in spec.search_space}
    try:
        # One input size is enough to find the dataset; each searched backbone's weights are fetched once here.
        load_task_data(with_task_choices(spec, {k: v[0] for k, v in searched.items()}), device)
        if spec.task.model.weights not in ("none", None):
            for name in searched.get("model", (spec.task.model.name,)):
                build_model(name, 10, weights=spec.task.model.weights)
    except (DatasetNotFound, WeightsNotAvailable) as exc:
        return str(exc)
    return None
