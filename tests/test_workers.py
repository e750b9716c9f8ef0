"""Device slots, parallel workers sharing one budget, killed workers, interrupts and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpsearch.core.errors import UsageError
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.core.record_keys import FailureKind
from hpsearch.orchestration.devices import Slot, plan_slots
from hpsearch.orchestration.events import TrialEnded, WorkerRetiring
from hpsearch.storage.stores import open_storage

from .support import run_cli, wait_for

# ------------------------------------------------------------------ slots → CUDA_VISIBLE_DEVICES


def test_auto_uses_every_gpu_times_trials_per_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = plan_slots("auto", 2, gpu_count=3)
    assert [(s.index, s.gpu) for s in slots] == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1", "2", "2"]


def test_auto_without_gpus_splits_the_cores_between_cpu_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    slots = plan_slots("auto", 2, gpu_count=0, cpu_count=8)
    assert [(s.gpu, s.threads) for s in slots] == [(None, 4), (None, 4)]
    assert slots[0].env() == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}  # GPUs hidden


def test_omp_num_threads_caps_cpu_workers(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert plan_slots("cpu", 1, gpu_count=0, cpu_count=8)[0].threads == 1


def test_explicit_gpu_list_and_cpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in plan_slots((1, 3), 1, gpu_count=4)] == ["1", "3"]
    assert [s.gpu for s in plan_slots("cpu", 3, gpu_count=4, cpu_count=2)] == [None, None, None]
    assert plan_slots("cpu", 3, gpu_count=0, cpu_count=2)[0].threads == 1


def test_a_gpu_that_does_not_exist_is_refused():
    with pytest.raises(UsageError, match=r"--devices: GPU 2 does not exist \(this machine sees 2 GPU\(s\)\)"):
        plan_slots((0, 2), 1, gpu_count=2)


@pytest.mark.parametrize(("parent_mask", "expected"), [
    ("2,3", ["2", "3"]),  # SLURM gave this job GPUs 2 and 3: our GPU 0 is physical 2
    (" 5, 1 ", ["5", "1"]),
    ("GPU-8f2c1e4a-0b1c-4d2e-9f00-123456789abc,GPU-11111111-2222-3333-4444-555555555555",
     ["GPU-8f2c1e4a-0b1c-4d2e-9f00-123456789abc", "GPU-11111111-2222-3333-4444-555555555555"]),
    ("MIG-0a1b2c3d-4e5f-6789-abcd-ef0123456789,MIG-1a1b2c3d-4e5f-6789-abcd-ef0123456789",
     ["MIG-0a1b2c3d-4e5f-6789-abcd-ef0123456789", "MIG-1a1b2c3d-4e5f-6789-abcd-ef0123456789"]),
])
def test_workers_land_on_the_gpus_the_parent_was_given(monkeypatch, parent_mask, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent_mask)
    slots = plan_slots("auto", 1, gpu_count=2)
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in slots] == expected


def test_a_gpu_index_outside_the_parents_mask_is_an_error():
    with pytest.raises(ValueError, match="GPU 2 is not among CUDA_VISIBLE_DEVICES=4,5"):
        Slot(0, 2).env(parent_visible="4,5")


def test_trials_packed_on_a_gpu_share_its_memory():
    assert [s.memory_fraction for s in plan_slots("auto", 1, gpu_count=2)] == [None, None]
    fractions = [s.memory_fraction for s in plan_slots("auto", 4, gpu_count=1)]
    assert len(fractions) == 4
    assert all(0.2 < f <= 0.25 for f in fractions)
    assert sum(fractions) < 1.0  # a margin for each process's CUDA context
    assert all(s.memory_fraction is None for s in plan_slots("cpu", 2, gpu_count=0, cpu_count=2))


def test_auto_trials_per_device_is_one_per_gpu_and_one_single_threaded_trial_per_core(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [s.gpu for s in plan_slots("auto", "auto", gpu_count=2, cpu_count=2)] == [0, 1]
    assert [(s.gpu, s.threads) for s in plan_slots("auto", "auto", gpu_count=0, cpu_count=2)] == [(None, 1)] * 2
    many = plan_slots("cpu", "auto", gpu_count=0, cpu_count=64)
    assert [(s.gpu, s.threads) for s in many] == [(None, 8)] * 8  # README: at most 8, the cores split among them


def test_slot_label():
    assert Slot(0, None).label == "cpu"
    assert Slot(1, 3).label == "cuda:3"


# ------------------------------------------------------------------ real worker processes


def load(workdir):
    return optuna.load_study(study_name="tiny", storage=open_storage(str(workdir / DEFAULT_STORAGE)))


def running_trial_with_an_epoch(workdir):
    try:
        trials = load(workdir).get_trials(states=(TrialState.RUNNING,))
    except (KeyError, FileNotFoundError):
        return None
    for t in trials:
        if t.intermediate_values and "hpsearch.worker_pid" in t.user_attrs:
            return t
    return None


def start_run_until_mid_trial(space, workdir, **popen):
    """`hpsearch run SPACE` in the background; returns it and the first trial seen mid-training."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(space)], cwd=workdir, **popen)
    try:
        return proc, wait_for(lambda: running_trial_with_an_epoch(workdir), 240, "a trial mid-training")
    except BaseException:
        proc.kill()
        raise


def interrupt(proc, times: int = 1) -> tuple[str, float]:
    """Send Ctrl-C `times` times; returns the run's output and how long it took to exit after."""
    for i in range(times):
        if i:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return output, time.monotonic() - started


def assert_nothing_left_running(workdir):
    study = load(workdir)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    statuses = [r.info.status for r in client.search_runs([exp.experiment_id])]
    assert "RUNNING" not in statuses, statuses


@pytest.mark.slow
def test_two_cpu_workers_share_one_study_and_meet_the_budget_exactly(write_space, workdir):
    space = write_space({"study": {"n_trials": 4}, "resources": {"trials_per_device": 2}})
    result = run_cli("run", str(space), cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    study = load(workdir)
    assert len(study.trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["hpsearch.worker_pid"] for t in study.trials}) == 2  # both workers trained
    assert_nothing_left_running(workdir)


@pytest.mark.slow
def test_a_killed_worker_fails_its_trial_which_is_retried_and_the_budget_is_met(write_space, workdir):
    space = write_space({"study": {"n_trials": 2}, "train": {"epochs": 6}})
    proc, victim = start_run_until_mid_trial(space, workdir)
    try:
        os.kill(victim.user_attrs["hpsearch.worker_pid"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    study = load(workdir)
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL
    assert "worker process died (killed by signal 9)" in dead.user_attrs["fail_reason"]
    retries = [t for t in study.trials if t.user_attrs.get("hpsearch.retry_of") == victim.number]
    assert len(retries) == 1
    assert retries[0].params == dead.params
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    killed = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED"
    assert killed.data.tags["hpsearch.state"] == "FAIL"
    assert_nothing_left_running(workdir)


@pytest.mark.slow
def test_sigint_stops_within_seconds_and_the_same_command_resumes(write_space, workdir):
    space = write_space({"study": {"n_trials": 1}, "train": {"epochs": 8}})  # one trial: the one interrupted
    proc, victim = start_run_until_mid_trial(space, workdir)
    output, stopped_in = interrupt(proc)
    assert proc.returncode == 130, output
    assert stopped_in < 15, stopped_in
    assert "run the same command again to resume" in output
    interrupted = load(workdir).trials[victim.number]
    assert interrupted.state == TrialState.FAIL
    assert "interrupted" in interrupted.user_attrs["fail_reason"]
    assert_nothing_left_running(workdir)

    result = run_cli("run", str(space), "--n-trials", "1", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(workdir)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 1
    retries = [t for t in study.trials if t.user_attrs.get("hpsearch.retry_of") == victim.number]
    assert len(retries) == 1
    assert retries[0].params == interrupted.params
    assert_nothing_left_running(workdir)


@pytest.mark.slow
def test_a_run_killed_outright_is_reaped_and_retried_by_the_next_run(write_space, workdir):
    """kill -9 of the whole run (parent and workers) leaves a RUNNING trial; the next run repairs it."""
    space = write_space({"study": {"n_trials": 1}, "train": {"epochs": 6}})  # one trial: the one killed
    proc, victim = start_run_until_mid_trial(
        space, workdir, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert load(workdir).trials[victim.number].state == TrialState.RUNNING  # nobody closed it

    result = run_cli("run", str(space), "--train-epochs-do-not-exist", cwd=workdir)
    assert result.returncode == 2  # a bad option changes nothing: the trial is still RUNNING
    assert load(workdir).trials[victim.number].state == TrialState.RUNNING

    result = run_cli("run", str(space), cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reaped 1 orphaned trial" in result.stdout
    study = load(workdir)
    reaped = study.trials[victim.number]
    assert reaped.state == TrialState.FAIL
    assert "worker process was gone" in reaped.user_attrs["fail_reason"]
    retries = [t for t in study.trials if t.user_attrs.get("hpsearch.retry_of") == victim.number]
    assert len(retries) == 1
    assert retries[0].params == reaped.params
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 1
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    assert client.get_run(reaped.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert_nothing_left_running(workdir)


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(write_space, workdir):
    space = write_space({"study": {"n_trials": 2}, "train": {"epochs": 8}})
    proc, victim = start_run_until_mid_trial(space, workdir)
    output, stopped_in = interrupt(proc, times=2)
    assert proc.returncode == 130, output
    assert stopped_in < 5, stopped_in
    assert load(workdir).trials[victim.number].state == TrialState.FAIL
    assert_nothing_left_running(workdir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet waited for by its (new) parent.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_orchestrator(write_space, workdir):
    """Workers are not daemons (they start DataLoader processes); if the parent dies by SIGKILL they still
    stop at once, failing their trial and closing its MLflow run instead of training on as orphans."""
    space = write_space({"study": {"n_trials": 2}, "train": {"epochs": 8}})
    proc, victim = start_run_until_mid_trial(space, workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = victim.user_attrs["hpsearch.worker_pid"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    wait_for(lambda: not _alive(worker), 30, "the orphaned worker to exit")
    trial = load(workdir).trials[victim.number]
    assert trial.state == TrialState.FAIL
    assert "interrupted" in trial.user_attrs["fail_reason"]
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"


# ------------------------------------------------------------------ out of memory beside neighbours


class _Process:
    exitcode = None


def _orchestrator_with_two_trials_on_one_gpu(capsys):
    """An Orchestrator over a real (in-memory) study, with two slots of GPU 0 each holding a trial."""
    from hpsearch.cli.live import LiveView
    from hpsearch.orchestration.orchestrator import Orchestrator, WorkerHandle

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    slots = plan_slots("auto", 2, gpu_count=1)
    orchestrator = Orchestrator(spec=None, study=study, slots=slots, storage_url=None, tracking_uri="",
                                experiment_id="0", parent_run_id="", live=LiveView("val_accuracy", "maximize", 4,
                                                                                   interactive=False))
    handles = []
    for slot in slots:
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0)
        handle = WorkerHandle(slot, _Process(), None, ready=True, trial_id=trial._trial_id, trial_number=trial.number)
        orchestrator.workers[slot.index] = handle
        handles.append(handle)
    return orchestrator, study, handles


def _oom_ends(orchestrator, study, handle) -> None:
    """What a worker does when its trial runs out of memory: tell FAIL, then report the end."""
    study.tell(handle.trial_number, state=TrialState.FAIL)
    orchestrator._handle_event(handle.slot.index, TrialEnded(handle.trial_number, "FAIL", None, "out of memory: ...",
                                                             FailureKind.OOM))


def test_out_of_memory_beside_a_running_neighbour_is_retried_once_with_the_reason(capsys):
    orchestrator, study, (first, second) = _orchestrator_with_two_trials_on_one_gpu(capsys)
    _oom_ends(orchestrator, study, first)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == study.trials[first.trial_number].params  # same parameters
    assert waiting[0].user_attrs["hpsearch.retry_of"] == first.trial_number
    assert "out of memory on cuda:0 while 1 other trial(s) shared it" in waiting[0].user_attrs["hpsearch.retry_reason"]
    assert "retried once" in capsys.readouterr().out

    # The retry runs out of memory beside a neighbour again: now it is this configuration's failure.
    retry = study.ask()
    assert retry.number == waiting[0].number
    first.trial_id, first.trial_number = retry._trial_id, retry.number
    _oom_ends(orchestrator, study, first)
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_out_of_memory_alone_on_the_gpu_is_not_retried(capsys):
    orchestrator, study, (first, second) = _orchestrator_with_two_trials_on_one_gpu(capsys)
    second.trial_id = second.trial_number = None  # the neighbour slot is idle
    _oom_ends(orchestrator, study, first)
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_a_worker_that_retires_after_a_failed_graph_capture_is_replaced(capsys):
    """After a failed CUDA graph capture the worker reports 'retire' and exits 0 between trials: the slot
    gets a fresh process, and that is not counted as a death before ready (which would stop the run)."""
    orchestrator, study, (first, second) = _orchestrator_with_two_trials_on_one_gpu(capsys)
    first.trial_id = first.trial_number = None  # its trial ended normally
    orchestrator._handle_event(first.slot.index, WorkerRetiring("CUDA graph capture failed (x)"))
    assert "starting a fresh worker process" in capsys.readouterr().out
    first.process.exitcode = 0
    spawned = []
    orchestrator._spawn = lambda slot, deaths=0: spawned.append((slot.index, deaths))
    for _ in range(orchestrator.MAX_START_FAILURES + 1):  # retiring again and again never stops the run
        orchestrator.workers[first.slot.index] = first
        orchestrator._check_dead()
    assert spawned == [(first.slot.index, 0)] * (orchestrator.MAX_START_FAILURES + 1)
    assert not study.get_trials(states=(TrialState.FAIL,))  # no trial was failed for it
