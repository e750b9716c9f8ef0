"""Orchestration cost per trial, and trials per hour with 1 vs 2 workers (and 1/2/4 per GPU where one exists).

    python benchmarks/parallel.py                 # everything this machine can run
    python benchmarks/parallel.py --only overhead # just the per-trial orchestration cost
    python benchmarks/parallel.py --json out.json

1. Overhead: everything hpsearch does around a trial's training on the embedded stores (journal
   file + SQLite MLflow): ask, owner attributes, suggest, open the child run with its params,
   per-epoch report/prune check + metrics, the best checkpoint (a real MobileNetV2 state_dict),
   close the run, tell. Reported as the time on the trial's own path (what delays the next trial)
   and, separately, what is left to the background writer thread (checkpoint file, closing the run).
   Baseline, measured in the same run: the hand-written glue it replaces —
   MLflow's fluent API (`start_run(nested=True)`, `log_params`, `log_metric` per metric per epoch,
   `log_artifact`), the way most hand-written objectives log.
2. Throughput: `hpsearch run` of a small real search (digits, ShuffleNetV2 at 16 px, 1 epoch per
   trial) with 1 and then 2 CPU worker processes; trials per hour and the ratio.
3. GPU (CUDA only): aggregate training images/s of MobileNetV2 at 32 px for trials_per_device 1, 2, 4.
4. CPU slots (`--only cpu-slots`): how to split the cores between trials. Every layout of N worker
   processes x T threads with N x T = cores: (a) aggregate training images/s of MobileNetV2 on
   CIFAR-shaped data (32 px, batch 128, SGD), N processes training at once; (b) the quickstart
   (spaces/quickstart.yaml as shipped) run with `trials_per_device: N`: wall time, trials/hour, epochs
   trained/minute and the best value. `resources.trials_per_device: auto` follows what this measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 5
REPO = Path(__file__).resolve().parents[1]


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def _state_dict():
    import torchvision

    return torchvision.models.mobilenet_v2(num_classes=10).state_dict()


def overhead(n_trials: int) -> dict:
    import optuna
    import torch

    from hpsearch.core import record_keys
    from hpsearch.search import trial_access
    from hpsearch.search.suggest import suggest
    from hpsearch.spec.study_spec import parse_spec
    from hpsearch.storage import ownership, stores
    from hpsearch.tracking import background_writer, study_runs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_spec(
        {
            "study": {"name": "bench", "n_trials": n_trials, "sampler": {"name": "tpe", "seed": 0}},
            "task": {"model": {"name": "mobilenet_v2", "weights": "none"}, "data": {"name": "digits"}},
            "search_space": {
                "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
                "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
                "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
                "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
                "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            },
        }
    )
    weights = _state_dict()
    metrics = {"train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.1, "epoch_seconds": 1.0,
               "images_per_second": 1000.0}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        study = optuna.create_study(study_name="bench", storage=stores.open_storage("studies/journal.log"),
                                    direction="maximize")
        tracker = study_runs.StudyTracker("sqlite:///mlruns/mlflow.db", "bench")
        parent = tracker.parent_run("bench", {})
        hpsearch_times, background_times = [], []
        for _ in range(n_trials):
            t0 = time.perf_counter()
            asked = study.ask()  # the parent's side of a trial, then the worker's, as hpsearch does them
            for k, v in ownership.owner_attrs().items():
                asked.set_user_attr(k, v)
            trial = trial_access.open_trial(study, trial_access.trial_id(asked))
            params = suggest(trial, spec.search_space, spec.train)
            run = study_runs.TrialRun.start(tracker.client, tracker.experiment_id, parent, "bench", trial.number,
                                            params)
            trial.set_user_attr(record_keys.ATTR_RUN_ID, run.run_id)
            for epoch in range(1, EPOCHS + 1):
                run.log_epoch(epoch, metrics)
                trial.report(0.5 + 0.01 * epoch, epoch)
                trial.should_prune()
            run.finish("COMPLETE", checkpoint=weights, wait=False)  # as a worker does
            study.tell(trial, 0.5)
            hpsearch_times.append(time.perf_counter() - t0)
            # Let the writer thread finish this trial's writes before the next one is timed, as a
            # trial's training would (it takes seconds): the row above is the trial's critical path.
            t1 = time.perf_counter()
            background_writer.drain()
            background_times.append(time.perf_counter() - t1)

        import mlflow

        mlflow.set_tracking_uri("sqlite:///mlruns/mlflow.db")
        mlflow.set_experiment("baseline")
        baseline_times = []
        with mlflow.start_run(run_name="baseline-parent"):
            for _ in range(n_trials):
                t0 = time.perf_counter()
                trial = study.ask()
                params = suggest(trial, spec.search_space, spec.train)
                with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
                    mlflow.log_params(params)
                    for epoch in range(1, EPOCHS + 1):
                        for k, v in metrics.items():
                            mlflow.log_metric(k, v, step=epoch)
                        trial.report(0.5, epoch)
                        trial.should_prune()
                    path = Path(tmp) / "model.pt"
                    torch.save(weights, path)
                    mlflow.log_artifact(str(path), "checkpoints")
                study.tell(trial, 0.5)
                baseline_times.append(time.perf_counter() - t0)
        os.chdir("/")
    skip = min(3, n_trials // 4)  # the first trials pay one-off costs (table creation, imports)
    results["hpsearch_ms_per_trial"] = statistics.median(hpsearch_times[skip:]) * 1000
    results["hpsearch_background_ms_per_trial"] = statistics.median(background_times[skip:]) * 1000
    results["baseline_ms_per_trial"] = statistics.median(baseline_times[skip:]) * 1000
    results["ratio_baseline_over_hpsearch"] = results["baseline_ms_per_trial"] / results["hpsearch_ms_per_trial"]
    results["epochs_per_trial"] = EPOCHS
    return results


SMALL_SPACE = {
    "study": {"name": "bench-par", "n_trials": 6, "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}},
    "task": {"model": {"name": "shufflenet_v2_x0_5", "weights": "none"},
             "data": {"name": "digits", "image_size": 16, "augment": "none"}},
    "train": {"epochs": 1, "batch_size": 64},
    "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    "resources": {"devices": "cpu", "trials_per_device": 1},
}


def throughput(n_trials: int, workers: list[int], devices: str = "cpu", space: dict | None = None,
               details: bool = False) -> dict:
    from hpsearch.cli.live import LiveView
    from hpsearch.orchestration.runner import run_study
    from hpsearch.spec.study_spec import parse_spec

    out = {}
    for k in workers:
        data = json.loads(json.dumps(space or SMALL_SPACE))
        data["study"]["n_trials"] = n_trials
        data["resources"] = {"devices": devices, "trials_per_device": k}
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                spec = parse_spec(data)
                t0 = time.perf_counter()
                summary = run_study(spec, LiveView(spec.study.metric, spec.study.direction, spec.study.n_trials,
                                                   interactive=False))
                seconds = time.perf_counter() - t0
                if details:  # epochs actually trained (pruned trials stop early) and the best value
                    import optuna

                    from hpsearch.storage.stores import open_storage

                    trials = optuna.load_study(study_name=spec.study.name,
                                               storage=open_storage(spec.study.storage)).trials
                    epochs = sum(len(t.intermediate_values) for t in trials)
            finally:
                os.chdir(cwd)
        out[f"{k}_workers"] = {"seconds": seconds, "trials": summary.finished,
                               "trials_per_hour": summary.finished / seconds * 3600}
        if details:
            out[f"{k}_workers"].update(epochs=epochs, epochs_per_minute=epochs / seconds * 60,
                                       best_value=summary.best_value)
    base = out[f"{workers[0]}_workers"]["trials_per_hour"]
    for k in workers:
        out[f"{k}_workers"]["ratio"] = out[f"{k}_workers"]["trials_per_hour"] / base
    return out


GPU_SPACE = {
    "study": {"name": "bench-gpu", "n_trials": 8, "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}},
    "task": {"model": {"name": "mobilenet_v2", "weights": "none"},
             "data": {"name": "fake", "samples": 20000, "num_classes": 10, "image_size": 32}},
    "train": {"epochs": 2, "batch_size": 128},
    "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
}


def _mnv2_worker(threads: int, steps: int, barrier, results) -> None:
    """One process of a layout: MobileNetV2 on CIFAR-shaped data; the second epoch's images/s."""
    import torch

    torch.set_num_threads(threads)
    from hpsearch.core.hparams import HParams
    from hpsearch.engine.data import DataConfig, load_data
    from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
    from hpsearch.engine.train import Trainer, seed_everything

    batch = 128
    task = load_data(DataConfig("fake", samples=int(steps * batch / 0.98) + 10, val_fraction=0.02), "cpu",
                     IMAGENET_MEAN, IMAGENET_STD)
    seed_everything(0)
    trainer = Trainer(build_model("mobilenet_v2", 10), task,
                      HParams(lr=0.01, batch_size=batch, epochs=2, optimizer="sgd", momentum=0.9), device="cpu")
    barrier.wait()  # every process of the layout trains at the same time
    results.put(trainer.fit()[1].images_per_second)


def layouts(cores: int) -> list[tuple[int, int]]:
    """(processes, threads each) for every split of the cores: 1 x cores ... cores x 1."""
    return [(n, cores // n) for n in range(1, cores + 1) if cores % n == 0]


def cpu_slots(cores: int, steps: int, quickstart_trials: int | None) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out: dict = {"cores": cores, "mnv2_cifar": {}, "quickstart": {}}
    for n, t in layouts(cores):
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_mnv2_worker, args=(t, steps, barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        per_process = [results.get(timeout=1800) for _ in procs]
        for p in procs:
            p.join()
        out["mnv2_cifar"][f"{n}x{t}"] = {"images_per_second": sum(per_process), "per_process": per_process}
    base = out["mnv2_cifar"][f"1x{cores}"]["images_per_second"]
    for v in out["mnv2_cifar"].values():
        v["ratio"] = v["images_per_second"] / base

    import yaml

    space = yaml.safe_load((REPO / "spaces" / "quickstart.yaml").read_text())
    if quickstart_trials:
        space["study"]["n_trials"] = quickstart_trials
    space["resources"]["devices"] = "cpu"
    for n, t in layouts(cores):
        r = throughput(space["study"]["n_trials"], [n], space=space, details=True)[f"{n}_workers"]
        out["quickstart"][f"{n}x{t}"] = r
    base = out["quickstart"][f"1x{cores}"]["trials_per_hour"]
    for v in out["quickstart"].values():
        v["ratio"] = v["trials_per_hour"] / base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["overhead", "throughput", "gpu", "cpu-slots"], default=None)
    parser.add_argument("--steps", type=int, default=12, help="training steps per epoch for cpu-slots (a)")
    parser.add_argument("--quickstart-trials", type=int, default=None, help="override the quickstart's n_trials")
    parser.add_argument("--trials", type=int, default=20, help="trials for the overhead measurement")
    parser.add_argument("--gpu-trials", type=int, default=8, help="trials at each trials_per_device for gpu (3)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    import torch

    results: dict = {"machine": _machine()}
    if args.only in (None, "overhead"):
        r = results["overhead"] = overhead(args.trials)
        print(f"orchestration per trial ({EPOCHS} epochs, checkpoint of MobileNetV2): hpsearch "
              f"{r['hpsearch_ms_per_trial']:.1f} ms on the trial's path "
              f"(+{r['hpsearch_background_ms_per_trial']:.1f} ms "
              f"left on the writer thread), hand-written fluent MLflow glue {r['baseline_ms_per_trial']:.1f} ms "
              f"({r['ratio_baseline_over_hpsearch']:.2f}x)")
    if args.only in (None, "throughput"):
        r = results["throughput_cpu"] = throughput(6, [1, 2])
        for k, v in r.items():
            print(f"{k}: {v['trials']} trials in {v['seconds']:.1f}s = {v['trials_per_hour']:.0f} trials/h "
                  f"({v['ratio']:.2f}x)")
    if args.only in (None, "gpu"):
        if torch.cuda.is_available():
            n = args.gpu_trials
            r = results["gpu_trials_per_device"] = throughput(n, [1, 2, 4], devices="auto", space=GPU_SPACE)
            for k, v in r.items():
                imgs = n * 2 * 20000 * 0.9
                print(f"trials_per_device {k}: {v['seconds']:.1f}s, ~{imgs / v['seconds']:,.0f} train img/s "
                      f"aggregate ({v['ratio']:.2f}x)")
        else:
            print("gpu: no CUDA device here; skipped")
    if args.only == "cpu-slots":  # minutes of CPU: only when asked for
        from hpsearch.orchestration.devices import usable_cores

        cores = usable_cores()  # the same count `trials_per_device: auto` splits
        r = results["cpu_slots"] = cpu_slots(cores, args.steps, args.quickstart_trials)
        for layout, v in r["mnv2_cifar"].items():
            print(f"MobileNetV2 CIFAR-shaped, {layout} (processes x threads): {v['images_per_second']:.0f} img/s "
                  f"aggregate ({v['ratio']:.2f}x)")
        for layout, v in r["quickstart"].items():
            print(f"quickstart, {layout}: {v['trials']} trials in {v['seconds']:.1f}s = {v['trials_per_hour']:.0f} "
                  f"trials/h ({v['ratio']:.2f}x), {v['epochs_per_minute']:.1f} epochs/min, best {v['best_value']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
