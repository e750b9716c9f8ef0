"""Search quality: does hpsearch find the best model, not just run trials?

One task, one data split per seed, the same budget of N trials, compared over several seeds:

  hpsearch1  `python -m hpsearch run space.yaml --n-trials N` as a user runs it (a subprocess, in a
             temporary folder), with hpsearch's defaults (TPE, median pruning, its trainer) and
             `resources: {devices: cpu, trials_per_device: 1}`: one trial at a time using every core
             (hpsearch/orchestration/devices.py: a slot gets usable_cores() // slots threads).
  hpsearch2  the same with `trials_per_device: 2`: two trials at once (on 2 cores: single-threaded).
  plain      a hand-written Optuna + PyTorch loop, as a typical user writes it (plain_train below):
             `study.optimize(objective, n_trials=N)`; the objective builds torchvision's
             mobilenet_v2(num_classes=10) from scratch, trains it with torch.optim (SGD with momentum
             or AdamW) in a plain `for` loop over shuffled slices of the training tensors (the ragged
             last batch included, as a DataLoader without drop_last does), steps a CosineAnnealingLR
             once per epoch (T_max = epochs) or no scheduler, evaluates on the validation split after
             each epoch, `trial.report` + `trial.should_prune()`, and returns the best epoch's
             validation accuracy (the value hpsearch tunes too). Same search space, the same sampler
             (TPESampler with the seed and n_startup_trials of the space) and pruner (MedianPruner with
             its settings), torch.set_num_threads(os.cpu_count()).
  random     the reference: the same plain loop with RandomSampler(seed) and NopPruner, so that the
             reference does not depend on hpsearch at all.

Every arm shares one Python dict (`space()` below): the hpsearch arms get it written out as their
YAML file, the plain arms suggest from it (`suggest()`). The task is spaces/quickstart.yaml's:
scikit-learn's digits (offline), MobileNetV2 from scratch at 32 px, no augmentation, 20% of the
training data held out for validation (and digits' fixed 20% test split, never seen by a search),
TPE (5 startup trials) + median pruning (3 startup trials, 2 warm-up epochs), and the searched
epochs (2..--max-epochs), lr, batch_size, optimizer, momentum (when sgd), weight_decay, dropout,
scheduler. The data tensors of every arm are hpsearch's own: `hpsearch.engine.data.load_data(..., split_seed=seed)`,
which is what an hpsearch study with sampler seed `seed` loads, so every arm of a seed sees the same
split.

Reported per arm (median and min-max over the seeds): the best validation accuracy of a search
(over its COMPLETE trials); the test accuracy of its winner (hpsearch: `python -m hpsearch best
--evaluate --format json` in the study's folder; plain arms: the best epoch's weights of the best
trial, kept in memory, evaluated on the test split); the epochs trained (all trials, pruned ones
included); the wall time (hpsearch: the `hpsearch run` subprocess, start to exit; plain: data
loading + study.optimize); and, for every arm but random, the share of random search's epochs it
needed to reach random search's best value on the same seed: the epochs of every trial finished
(any state, in completion order) up to and including the first COMPLETE trial whose value reached
random's best, divided by all epochs random search trained (its whole budget); "not reached" if
none did.

`--parity` checks instead that hpsearch's Trainer trains as well as the plain loop: for fixed
configurations (SGD and AdamW, with and without cosine, batch 64 and 100, neither of which divides
the 1151 training images), it trains with hpsearch's Trainer (build_model + Trainer, as a trial
does) and with plain_train on the same tensors over 3 seeds (default 6 epochs: MobileNetV2 from
scratch often sits at chance validation accuracy for its first 2-4 epochs here), and reports both
final validation accuracies (mean ± sd, min-max) and the difference of the means, final and best
epoch. The runs are not paired: the plain loop builds its own torchvision model (initialised as
torchvision does, as hpsearch's from-scratch models are too) and shuffles with its own generator,
so a difference is only meaningful against the seed-to-seed spread shown beside it. The intended
difference: the plain loop steps cosine once per epoch (the common idiom), hpsearch once per
optimizer step. (tests/test_plain_loop_parity.py pairs
the runs instead: same starting weights, same shuffling; there the two agree exactly.)

Commands (from the repository root, with hpsearch installed, e.g. `pip install -e .`):

    python benchmarks/search_quality.py                                   # full: 5 seeds x 20 trials x 4 arms
    python benchmarks/search_quality.py --json search_quality.json        # ... and the raw results
    python benchmarks/search_quality.py --seeds 1 --trials 3 --arms plain,random   # smoke (~1-2 min)
    python benchmarks/search_quality.py --parity                          # 8 configs x 3 seeds x 6 epochs
    python benchmarks/search_quality.py --parity --seeds 2 --epochs 2 --configs adamw-none-100,sgd-cosine-64  # smoke

Time on the project's 2-core CPU VM (MobileNetV2 at 32 px trains ~230-450 images/s there, 3-5 s
per epoch of 1151 images with evaluation; measured with --seeds 1 --trials 2-3): about 4-6 min per
arm per seed at 20 trials (random search, which never prunes, is the slowest; hpsearch arms add ~7 s
of process start-up and ~10 s for `best --evaluate`, not counted in their wall time), so the full run
(4 arms x 5 seeds) takes about 1.5-2 h; --parity about 15 min (48 runs of 6 epochs).
Close other work on the machine first: the arms run one after another, and a core busy with
anything else slows every two-thread trial (OpenMP threads wait at each barrier for the descheduled
one) by far more than 2x: a 50 s smoke run took over 10 min beside another job. On a shared
machine, smoke-test with --threads 1 (it caps every arm, so they stay comparable; the numbers are
then not the defaults' numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Runnable from a plain checkout: hpsearch's data loader gives every arm the same tensors.
sys.path.insert(0, str(REPO))

ARMS = ("hpsearch1", "hpsearch2", "plain", "random")
ARM_TITLES = {
    "hpsearch1": "hpsearch, 1 slot (1 trial x all cores)",
    "hpsearch2": "hpsearch, 2 slots (2 trials at once)",
    "plain": "plain Optuna + PyTorch loop (TPE + median)",
    "random": "random search, no pruning (plain loop)",
}
STUDY_NAME = "search-quality"
MODEL = "mobilenet_v2"
EVAL_BATCH = 512
# The search's sampler and pruner (seed aside): --sampler / --pruner replace them, to compare settings.
SAMPLER: dict[str, Any] = {"name": "tpe", "n_startup_trials": 5}
PRUNER: dict[str, Any] = {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2}


# --------------------------------------------------------------------------- the one shared space


def space(seed: int, trials: int, max_epochs: int = 6, slots: int = 1) -> dict[str, Any]:
    """The search, as an hpsearch space file: spaces/quickstart.yaml's task and search space.

    The plain arms read the same dict (sampler and pruner settings, the search space, the data).
    """
    return {
        "study": {
            "name": STUDY_NAME,
            "metric": "val_accuracy",
            "direction": "maximize",
            "n_trials": trials,
            "sampler": {**SAMPLER, "seed": seed},
            "pruner": dict(PRUNER),
        },
        "task": {
            "model": {"name": MODEL, "weights": "none"},
            "data": {"name": "digits", "val_fraction": 0.2, "image_size": 32, "augment": "none"},
        },
        "train": {"label_smoothing": 0.0},
        "search_space": {
            "epochs": {"type": "int", "low": 2, "high": max_epochs},
            "lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}},
            "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "scheduler": {"type": "categorical", "choices": ["cosine", "none"]},
        },
        "resources": {"devices": "cpu", "trials_per_device": slots},
        "tracking": {"uri": "sqlite:///mlruns/mlflow.db", "checkpoints": "complete"},
    }


def suggest(trial, search_space: dict[str, dict]) -> dict[str, Any]:
    """Suggest the space's parameters in file order; a `when:` names a parameter suggested before it."""
    values: dict[str, Any] = {}
    for name, p in search_space.items():
        if any(values.get(k) != v for k, v in (p.get("when") or {}).items()):
            continue
        if p["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, p["choices"])
        elif p["type"] == "int":
            values[name] = trial.suggest_int(name, p["low"], p["high"], log=p.get("log", False))
        else:
            values[name] = trial.suggest_float(name, p["low"], p["high"], log=p.get("log", False))
    return values


# --------------------------------------------------------------------------- data: hpsearch's own tensors


def load_tensors(data_section: dict, seed: int):
    """(task, {split: (x float normalised NCHW, y int64)}) exactly as an hpsearch study of this seed loads them."""
    from hpsearch.core.data_config import DataConfig
    from hpsearch.engine.data import load_data
    from hpsearch.engine.models import normalization

    mean, std = normalization(MODEL, "none")
    task = load_data(DataConfig(**data_section), "cpu", mean, std, split_seed=seed)
    tensors = {}
    for name in ("train", "val", "test"):
        split = getattr(task, name)
        x, y = next(split.batches(len(split), shuffle=False, augment=False))  # the whole split, normalised
        tensors[name] = (x.contiguous(), y)
    return task, tensors


# --------------------------------------------------------------------------- the plain loop


def plain_evaluate(model, x, y) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), EVAL_BATCH):
            correct += (model(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum().item()
    return correct / len(x)


def plain_train(params: dict[str, Any], tensors: dict, seed: int,
                on_epoch: Callable[[int, float], None] | None = None) -> tuple[float, dict, list[float]]:
    """Train MobileNetV2 as a hand-written objective does: (best val accuracy, its weights, val accuracy per epoch).

    on_epoch(epoch, val_accuracy) after each epoch (1-based) may raise optuna.TrialPruned.
    """
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2(num_classes=10, dropout=params.get("dropout", 0.2))
    lr, wd, epochs, bs = params["lr"], params.get("weight_decay", 0.0), params["epochs"], params["batch_size"]
    if params["optimizer"] == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=params.get("momentum", 0.9), weight_decay=wd)
    elif params["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    else:
        raise ValueError(f"the plain loop knows sgd and adamw, not {params['optimizer']!r}")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
                 if params.get("scheduler", "none") == "cosine" else None)
    x_train, y_train = tensors["train"]
    x_val, y_val = tensors["val"]
    n = len(x_train)
    assert n % bs != 1, "a last batch of one image would break BatchNorm; pick another batch size"
    g = torch.Generator().manual_seed(seed)
    best, best_state, curve = -1.0, None, []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        acc = plain_evaluate(model, x_val, y_val)
        curve.append(acc)
        if acc > best:
            best, best_state = acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, acc)
    assert best_state is not None
    return best, best_state, curve


def run_plain(arm: str, seed: int, trials: int, max_epochs: int, threads: int | None = None) -> dict[str, Any]:
    """The plain (TPE + median) or random (RandomSampler + NopPruner) search, in this process."""
    import optuna
    import torch
    import torchvision

    torch.set_num_threads(threads or os.cpu_count() or 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sp = space(seed, trials, max_epochs)
    started = time.perf_counter()
    _, tensors = load_tensors(sp["task"]["data"], seed)
    if arm == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    else:
        kw = {k: v for k, v in sp["study"]["sampler"].items() if k != "name"}
        sampler = optuna.samplers.TPESampler(**kw)
        pruner = optuna.pruners.MedianPruner(**{k: v for k, v in sp["study"]["pruner"].items() if k != "name"})
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    winner: dict[str, Any] = {"value": -math.inf, "number": None, "state": None, "params": None}

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, sp["search_space"])

        def on_epoch(epoch: int, acc: float) -> None:
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        best, state, _ = plain_train(params, tensors, seed=seed * 1000 + trial.number, on_epoch=on_epoch)
        if best > winner["value"]:  # strictly: ties keep the first, as study.best_trial does
            winner.update(value=best, number=trial.number, state=state, params=params)
        return best

    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - started
    result = summarise_trials(study.trials, by_completion=False)
    assert winner["number"] == study.best_trial.number, (winner["number"], study.best_trial.number)
    model = torchvision.models.mobilenet_v2(num_classes=10)
    model.load_state_dict(winner["state"])
    result.update(wall_s=seconds, test_accuracy=plain_evaluate(model, *tensors["test"]))
    return result


# --------------------------------------------------------------------------- the hpsearch arms


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def run_hpsearch(slots: int, seed: int, trials: int, max_epochs: int, keep: Path | None,
                 threads: int | None = None) -> dict[str, Any]:
    """`hpsearch run` of the shared space in a fresh folder, read back with Optuna; `best --evaluate` for test."""
    import optuna
    import yaml

    from hpsearch.storage.stores import open_storage

    folder = Path(tempfile.mkdtemp(prefix=f"sq-hpsearch{slots}-s{seed}-", dir=keep))
    try:
        (folder / "space.yaml").write_text(yaml.safe_dump(space(seed, trials, max_epochs, slots), sort_keys=False))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
        if threads:  # hpsearch reads an explicit OMP_NUM_THREADS as a cap on each slot's threads
            env["OMP_NUM_THREADS"] = str(threads)
        hp = [sys.executable, "-m", "hpsearch"]
        log = folder / "run.log"
        started = time.perf_counter()
        with open(log, "w") as out:
            rc = subprocess.run([*hp, "run", "space.yaml", "--n-trials", str(trials)], cwd=folder, env=env,
                                stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - started
        if rc != 0:
            raise RuntimeError(f"hpsearch run exited {rc} in {folder}:\n{_tail(log)}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(str(folder / "studies/journal.log")))
        result = summarise_trials(study.trials, by_completion=True)
        best = subprocess.run([*hp, "best", "space.yaml", "--evaluate", "--format", "json", "--device", "cpu"],
                              cwd=folder, env=env, capture_output=True, text=True)
        if best.returncode != 0:
            raise RuntimeError(f"hpsearch best --evaluate exited {best.returncode} in {folder}:\n{best.stderr}")
        record = json.loads(best.stdout)
        if not math.isclose(record["value"], result["best_value"]):
            raise RuntimeError(f"hpsearch best says {record['value']}, the study's trials {result['best_value']}")
        result.update(wall_s=seconds, test_accuracy=record["test_accuracy"])
        if keep is not None:
            result["folder"] = str(folder)
        return result
    finally:
        if keep is None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- reading trials back


def summarise_trials(trials, by_completion: bool) -> dict[str, Any]:
    """Best value (COMPLETE trials), counts, epochs, and the trials in completion order as (epochs, value|None)."""
    from optuna.trial import TrialState

    finished = [t for t in trials if t.state.is_finished()]
    if by_completion:  # parallel trials finish out of number order
        finished.sort(key=lambda t: (t.datetime_complete, t.number))
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no trial completed")
    best = max(complete, key=lambda t: t.value)
    order = [(len(t.intermediate_values), t.value if t.state == TrialState.COMPLETE else None) for t in finished]
    return {
        "best_value": best.value,
        "best_params": best.params,
        "trials": len(finished),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "failed": sum(t.state == TrialState.FAIL for t in finished),
        "epochs": sum(e for e, _ in order),
        "order": order,
    }


def epochs_to_reach(order: list[tuple[int, float | None]], target: float) -> int | None:
    """Cumulative epochs of the finished trials until a COMPLETE one's value reaches `target`; None if never."""
    total = 0
    for epochs, value in order:
        total += epochs
        if value is not None and value >= target - 1e-12:
            return total
    return None


# --------------------------------------------------------------------------- report


def cpu_facts() -> dict[str, Any]:
    """The CPU's model name, its cores and how many this process may use (stdlib only: every benchmark's)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable}


def machine() -> dict[str, Any]:
    import optuna
    import torch

    return {**cpu_facts(), "torch": torch.__version__, "optuna": optuna.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def machine_line(m: dict[str, Any]) -> str:
    omp = f", OMP_NUM_THREADS={m['omp_num_threads']}" if m["omp_num_threads"] else ""
    return (f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), GPU: {m['gpu']}, "
            f"torch {m['torch']}, optuna {m['optuna']}, Python {m['python']}{omp}")


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def add_reach(results: dict[str, list[dict]]) -> None:
    """For each non-random arm and seed: epochs (and share of random's) to reach random search's best."""
    random_by_seed = {r["seed"]: r for r in results.get("random", [])}
    for arm, rows in results.items():
        for r in rows:
            ref = random_by_seed.get(r["seed"])
            if arm == "random":
                r["epochs_to_own_best"] = epochs_to_reach(r["order"], r["best_value"])
            elif ref is not None:
                reached = epochs_to_reach(r["order"], ref["best_value"])
                r["epochs_to_random_best"] = reached
                r["share_of_random_epochs"] = None if reached is None else reached / ref["epochs"]


def markdown(results: dict[str, list[dict]], settings: dict, m: dict) -> str:
    lines = [
        f"Machine: {machine_line(m)}.",
        f"Task: digits, MobileNetV2 from scratch at 32 px, {settings['trials']} trials per search, epochs "
        f"2–{settings['max_epochs']}, seeds {', '.join(map(str, settings['seeds']))}. Median (min–max) over seeds."
        + (f" Threads capped at {settings['threads']} per trial (--threads)." if settings.get("threads") else ""),
        "",
        "| arm | best val accuracy | test accuracy of the winner | epochs trained | wall time | "
        "epochs to reach random's best (share of random's epochs) |",
        "|---|---|---|---|---|---|",
    ]
    for arm, rows in results.items():
        if not rows:
            continue
        shares = [r["share_of_random_epochs"] for r in rows if r.get("share_of_random_epochs") is not None]
        if arm == "random":
            reach = "reference"
        elif "random" not in results:
            reach = "n/a (random not run)"
        else:
            missed = sum(1 for r in rows if r.get("epochs_to_random_best") is None)
            reach = _spread(shares, ".0%") if shares else "not reached"
            if shares and missed:
                reach += f"; not reached in {missed} of {len(rows)} seeds"
        lines.append(
            f"| {ARM_TITLES[arm]} | {_spread([r['best_value'] for r in rows], '.4f')} | "
            f"{_spread([r['test_accuracy'] for r in rows], '.4f')} | {_spread([r['epochs'] for r in rows], '.0f')} | "
            f"{_spread([r['wall_s'] for r in rows], '.0f')} s | {reach} |")
    lines += ["", "Per seed:", "",
              "| arm | seed | best val | test | trials (complete/pruned/failed) | epochs | wall s | "
              "epochs to random's best |",
              "|---|---|---|---|---|---|---|---|"]
    for arm, rows in results.items():
        for r in rows:
            if arm == "random":
                reach = f"its own best after {r['epochs_to_own_best']} of {r['epochs']}"
            elif "epochs_to_random_best" not in r:
                reach = "-"
            elif r["epochs_to_random_best"] is None:
                reach = "not reached"
            else:
                reach = f"{r['epochs_to_random_best']} ({r['share_of_random_epochs']:.0%})"
            lines.append(f"| {arm} | {r['seed']} | {r['best_value']:.4f} | {r['test_accuracy']:.4f} | "
                         f"{r['complete']}/{r['pruned']}/{r['failed']} | {r['epochs']} | {r['wall_s']:.0f} | {reach} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- --parity


PARITY_CONFIGS = {
    f"{opt}-{sched}-{bs}": {"optimizer": opt, "lr": lr, "momentum": 0.9, "weight_decay": wd, "dropout": 0.2,
                            "scheduler": sched, "batch_size": bs}
    for opt, lr, wd in (("sgd", 0.05, 5e-5), ("adamw", 3e-3, 1e-4))
    for sched in ("none", "cosine")
    for bs in (64, 100)  # 1151 training images: neither divides them (a ragged last batch of 63 / 51)
}


def hpsearch_train(params: dict[str, Any], task, seed: int) -> list[float]:
    """Validation accuracy per epoch of hpsearch's Trainer, built as a trial builds it (builders.build_trainer)."""
    from hpsearch.core.hparams import HParams
    from hpsearch.engine.models import build_model
    from hpsearch.engine.train import Trainer, seed_everything

    hp = HParams.from_dict(params)
    seed_everything(seed)
    model = build_model(MODEL, task.num_classes, weights="none", dropout=hp.dropout, freeze=hp.freeze)
    trainer = Trainer(model, task, hp, device="cpu", seed=seed)
    history = trainer.fit()
    assert trainer.images_last_epoch == len(task.train), "the trainer skipped training images"
    return [s.val_accuracy for s in history]


def parity(configs: list[str], seeds: list[int], epochs: int, threads: int | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    data = space(0, 1)["task"]["data"]
    out: dict[str, Any] = {}
    for name in configs:
        params = {**PARITY_CONFIGS[name], "epochs": epochs}
        rows = []
        for seed in seeds:
            # The split follows the seed, as a study's does; both trainers get the same tensors.
            task, tensors = load_tensors(data, seed)
            t0 = time.perf_counter()
            ours = hpsearch_train(params, task, seed)
            t1 = time.perf_counter()
            _, _, plain = plain_train(params, tensors, seed)
            t2 = time.perf_counter()
            rows.append({"seed": seed, "hpsearch": ours, "plain": plain, "hpsearch_s": t1 - t0, "plain_s": t2 - t1})
            print(f"  {name} seed {seed}: hpsearch {ours[-1]:.4f} ({t1 - t0:.0f} s), "
                  f"plain {plain[-1]:.4f} ({t2 - t1:.0f} s)", file=sys.stderr, flush=True)
        out[name] = {"params": params, "seeds": rows}
    return out


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f} ({min(values):.3f}–{max(values):.3f})"


def parity_markdown(out: dict[str, Any], seeds: list[int], epochs: int, m: dict, threads: int | None = None) -> str:
    lines = [
        f"Machine: {machine_line(m)}.",
        f"digits (1151 train / 287 val images), MobileNetV2 from scratch at 32 px, {epochs} epochs, "
        f"seeds {', '.join(map(str, seeds))}: final-epoch validation accuracy, mean ± sd (min–max)."
        + (f" {threads} thread(s)." if threads else ""),
        "",
        "| config (optimizer-scheduler-batch) | hpsearch Trainer | plain loop | difference of means "
        "| same, best epoch |",
        "|---|---|---|---|---|",
    ]
    for name, r in out.items():
        ours = [s["hpsearch"][-1] for s in r["seeds"]]
        plain = [s["plain"][-1] for s in r["seeds"]]
        best_ours = [max(s["hpsearch"]) for s in r["seeds"]]
        best_plain = [max(s["plain"]) for s in r["seeds"]]
        lines.append(f"| {name} | {_mean_sd(ours)} | {_mean_sd(plain)} | "
                     f"{statistics.fmean(ours) - statistics.fmean(plain):+.4f} | "
                     f"{statistics.fmean(best_ours) - statistics.fmean(best_plain):+.4f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def yaml_mapping(text: str) -> dict[str, Any]:
    import yaml

    value = yaml.safe_load(text)
    if not isinstance(value, dict) or "name" not in value:
        raise argparse.ArgumentTypeError(f"expected a mapping with a name, got {text!r}")
    return value


def reference_rows(path: Path, seeds: list[int], trials: int, max_epochs: int) -> list[dict]:
    """The random arm of an earlier run, checked to be the same setting."""
    earlier = json.loads(path.read_text())
    s = earlier["settings"]
    if (s["trials"], s["max_epochs"]) != (trials, max_epochs) or not set(seeds) <= set(s["seeds"]):
        sys.exit(f"--reference {path}: ran {s['trials']} trials, epochs 2-{s['max_epochs']}, seeds {s['seeds']}")
    rows = [r for r in earlier["results"].get("random", []) if r["seed"] in seeds]
    if len(rows) != len(seeds):
        sys.exit(f"--reference {path}: has no random arm for every seed")
    return rows


def _run_parity(parser: argparse.ArgumentParser, args: argparse.Namespace, m: dict) -> int:
    """--parity: the Trainer against the plain loop on fixed configurations."""
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in PARITY_CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}")
    seeds = list(range(args.seeds or 3))
    out = parity(configs, seeds, args.epochs, args.threads)
    print(parity_markdown(out, seeds, args.epochs, m, args.threads))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "mode": "parity", "epochs": args.epochs,
                                               "threads": args.threads, "seeds": seeds, "results": out}, indent=2))
    return 0


def _run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """One arm's search for one seed, said on stderr as it starts and ends."""
    print(f"seed {seed}: {arm} ...", file=sys.stderr, flush=True)
    if arm.startswith("hpsearch"):
        r = run_hpsearch(int(arm[-1]), seed, args.trials, args.max_epochs, args.keep, args.threads)
    else:
        r = run_plain(arm, seed, args.trials, args.max_epochs, args.threads)
    r["seed"] = seed
    print(f"seed {seed}: {arm}: best val {r['best_value']:.4f}, test {r['test_accuracy']:.4f}, "
          f"{r['complete']} complete / {r['pruned']} pruned / {r['failed']} failed, {r['epochs']} epochs, "
          f"{r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds: 0..N-1 (default 5; --parity: 3)")
    parser.add_argument("--trials", type=int, default=20, help="trials per search (default 20)")
    parser.add_argument("--max-epochs", type=int, default=6, help="upper bound of the searched epochs (default 6)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--json", metavar="OUT", help="also write the results (per seed, every trial) here")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep the hpsearch arms' study folders under DIR (default: deleted)")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap every arm's threads per trial (plain: torch.set_num_threads; hpsearch: "
                             "OMP_NUM_THREADS, which it reads as a cap per slot); default: plain arms use "
                             "os.cpu_count(), hpsearch its own plan. For a machine others are using too")
    parser.add_argument("--sampler", metavar="YAML", type=yaml_mapping,
                        help="replace the sampler settings (seed aside), e.g. '{name: tpe, multivariate: true, "
                             "group: true}'; the hpsearch and plain arms all use it")
    parser.add_argument("--pruner", metavar="YAML", type=yaml_mapping,
                        help="replace the pruner settings, e.g. '{name: median, n_warmup_steps: 1}'")
    parser.add_argument("--reference", metavar="JSON", type=Path,
                        help="take the random arm's results from an earlier --json of the same seeds, trials "
                             "and epochs instead of running it again (it does not depend on --sampler/--pruner)")
    parser.add_argument("--parity", action="store_true", help="Trainer vs plain loop on fixed configurations")
    parser.add_argument("--epochs", type=int, default=6, help="--parity: epochs per run (default 6)")
    parser.add_argument("--configs", default=",".join(PARITY_CONFIGS),
                        help=f"--parity: comma-separated subset of {','.join(PARITY_CONFIGS)}")
    args = parser.parse_args(argv)
    m = machine()
    if m["omp_num_threads"]:
        print(f"note: OMP_NUM_THREADS={m['omp_num_threads']} caps hpsearch's threads per slot", file=sys.stderr)

    if args.parity:
        return _run_parity(parser, args, m)

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)} (choose from {', '.join(ARMS)})")
    if args.max_epochs < 2:
        parser.error("--max-epochs must be >= 2 (the space searches epochs from 2)")
    seeds = list(range(args.seeds or 5))
    for settings_now, replacement in ((SAMPLER, args.sampler), (PRUNER, args.pruner)):
        if replacement:
            settings_now.clear()
            settings_now.update(replacement)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS if arm in arms}
    for seed in seeds:
        for arm in results:
            results[arm].append(_run_arm(arm, seed, args))
    if args.reference is not None:
        results["random"] = reference_rows(args.reference, seeds, args.trials, args.max_epochs)
    add_reach(results)
    settings = {"trials": args.trials, "max_epochs": args.max_epochs, "seeds": seeds, "arms": arms,
                "threads": args.threads,
                "space": space(0, args.trials, args.max_epochs)}
    print(markdown(results, settings, m))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "settings": settings, "results": results},
                                              indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
