"""Population-based training against TPE + median pruning and random search, at the same epoch budget.

Two tasks, both offline:

  quickstart  the quickstart's task: scikit-learn's digits at 32 px, MobileNetV2 from scratch (weights none).
  finetune    a transfer task as benchmarks/finetune_methods.py builds it: ResNet-18 pretrained by this script on
              digits 0-4 (`hpsearch train`), fine-tuned on digits 5-9 with few labelled images, 16 px.

Per task and seed, three searches over the same mutable hyperparameters (the ones PBT may change mid-training;
quickstart: lr, momentum, weight_decay; finetune: lr, backbone_lr_scale, weight_decay), the same fixed settings
(SGD, cosine schedule, the same epochs per trial) and the same seed:

  pbt     study.scheduler pbt: --population members, each trained --epochs epochs, exploit/explore every
          --interval epochs (quantile 0.25, Ray's factors 0.8/1.25, resample probability 0.25). Its budget is
          exactly population × epochs epochs.
  random  --population trials of random search, no pruning: exactly the same epochs as pbt.
  tpe     TPE + median pruning (hpsearch's defaults: max(5, min(10, n // 4)) startup trials, 2-epoch warm-up)
          with 1.5 × --population trials: pruning stops some early, so it trains about as many epochs; the epochs
          it did train are reported, and the share of them PBT used.

Each search is `python -m hpsearch run space.yaml` in a fresh folder (as a user runs it, 2 CPU slots), then
`hpsearch best --evaluate` gives the winner's test accuracy. Reported per arm: median and range over the seeds of
the best validation accuracy and of the winner's test accuracy, the epochs trained and the wall time.

    python benchmarks/pbt.py                         # 3 seeds, both tasks (~25 min on the 2-core VM)
    python benchmarks/pbt.py --tasks quickstart --seeds 3 --json pbt.json
    python benchmarks/pbt.py --smoke                 # 1 seed, population 2, 2 epochs: plumbing, not a result
    python benchmarks/pbt.py --report pbt.json       # the table of a (partial) --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import finetune_methods  # noqa: E402
from finetune_methods import log, pretrain, run_search, write_digits_folders  # noqa: E402
from search_quality import _spread, machine, machine_line  # noqa: E402

TASKS = ("quickstart", "finetune")
ARMS = ("pbt", "tpe", "random")
ARM_TITLES = {"pbt": "PBT", "tpe": "TPE + median pruning", "random": "random search"}


def search_space(task: str) -> dict[str, Any]:
    space: dict[str, Any] = {
        "lr": {"type": "float", "low": 1.0e-3, "high": 0.3, "log": True},
        "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
    }
    if task == "quickstart":
        space["momentum"] = {"type": "float", "low": 0.8, "high": 0.95}
    else:
        space["lr"] = {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True}
        space["backbone_lr_scale"] = {"type": "float", "low": 0.01, "high": 1.0, "log": True}
    return space


def tpe_trials(population: int) -> int:
    return (3 * population + 1) // 2


def space(task: str, arm: str, seed: int, population: int, epochs: int, interval: int, data_root: Path | None,
          weights: str | None) -> dict[str, Any]:
    study: dict[str, Any] = {"name": finetune_methods.STUDY, "metric": "val_accuracy", "direction": "maximize"}
    if arm == "pbt":
        study |= {"sampler": {"name": "random", "seed": seed},
                  "scheduler": {"name": "pbt", "population": population, "interval": interval}}
    elif arm == "random":
        study |= {"n_trials": population, "sampler": {"name": "random", "seed": seed}, "pruner": {"name": "none"}}
    else:
        # Median pruning (the default) stops about a third of the trials early: 1.5 × population trials train
        # about population × epochs epochs.
        study |= {"n_trials": tpe_trials(population), "sampler": {"name": "tpe", "seed": seed}}
    if task == "quickstart":
        data = {"name": "digits", "val_fraction": 0.2, "image_size": 32, "augment": "none"}
        model = {"name": "mobilenet_v2", "weights": "none"}
        train: dict[str, Any] = {"batch_size": 64}
    else:
        assert data_root is not None
        assert weights is not None
        data = {"name": "imagefolder", "root": str(data_root), "val_fraction": 0.25, "image_size": 16,
                "augment": "none"}
        model = {"name": finetune_methods.MODEL, "weights": weights}
        train = {"batch_size": 32, "momentum": 0.9}
    return {
        "study": study,
        "task": {"model": model, "data": data},
        "train": {"epochs": epochs, "optimizer": "sgd", "scheduler": "cosine", "label_smoothing": 0.0, **train},
        "search_space": search_space(task),
        "resources": {"devices": "cpu", "trials_per_device": 2},
        "tracking": {"uri": "sqlite:///mlruns/mlflow.db", "checkpoints": "complete"},
    }


def markdown(results: dict[str, dict[str, list[dict]]], settings: dict, m: dict) -> str:
    lines = [f"Machine: {machine_line(m)}.", "",
             f"Settings: {settings['seeds']} seed(s) ({', '.join(map(str, settings['seed_list']))}); population "
             f"{settings['population']}, {settings['epochs']} epochs per member/trial, interval "
             f"{settings['interval']}; random search {settings['population']} trials; TPE + median "
             f"{tpe_trials(settings['population'])} trials; 2 CPU slots."]
    for task, arms in results.items():
        lines += ["", f"**{task}**", "",
                  "| arm | best val accuracy | winner's test accuracy | epochs trained | wall time (s) |",
                  "|---|---|---|---|---|"]
        for arm in ARMS:
            rows = arms.get(arm)
            if rows:
                lines.append(f"| {ARM_TITLES[arm]} | {_spread([r['best_value'] for r in rows], '.3f')} "
                             f"| {_spread([r['test_accuracy'] for r in rows], '.3f')} "
                             f"| {_spread([r['epochs'] for r in rows], '.0f')} "
                             f"| {_spread([r['wall_s'] for r in rows], '.0f')} |")
        pbt = {r["seed"]: r for r in arms.get("pbt", [])}
        for other in ("tpe", "random"):
            rows = {r["seed"]: r for r in arms.get(other, [])}
            common = sorted(set(pbt) & set(rows))
            if common:
                dv = [pbt[s]["best_value"] - rows[s]["best_value"] for s in common]
                share = [pbt[s]["epochs"] / rows[s]["epochs"] for s in common]
                lines.append(f"- PBT − {ARM_TITLES[other]}, paired by seed: val {_spread(dv, '+.3f')}; "
                             f"PBT's epochs / its epochs {_spread(share, '.2f')}")
        lines.append("- per seed (best val / test): " + "; ".join(
            f"{arm} s{r['seed']} {r['best_value']:.3f}/{r['test_accuracy']:.3f}"
            for arm in ARMS for r in arms.get(arm, [])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=80, help="finetune: training images per target class")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--keep", metavar="DIR")
    parser.add_argument("--report", metavar="JSON")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(markdown(saved["results"], saved["settings"], saved["machine"]))
        return 0
    if args.smoke:
        args.seeds, args.population, args.epochs, args.interval, args.pretrain_epochs = 1, 2, 2, 1, 1
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    m = machine()
    settings = {"seeds": len(seeds), "seed_list": seeds, "population": args.population, "epochs": args.epochs,
                "interval": args.interval, "tasks": tasks, "smoke": args.smoke}
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pbt-bench-", dir=args.keep))
    results: dict[str, dict[str, list[dict]]] = {t: {a: [] for a in ARMS} for t in tasks}
    started = time.perf_counter()
    try:
        target = weights = None
        if "finetune" in tasks:
            source, target = write_digits_folders(work / "data", args.per_class)
            weights = pretrain(work, source, args.pretrain_epochs, 16)["weights"]
        for task in tasks:
            for seed in seeds:
                for arm in ARMS:
                    sp = space(task, arm, seed, args.population, args.epochs, args.interval, target, weights)
                    log(f"{task} {arm} seed {seed}: hpsearch run ...")
                    results[task][arm].append(run_search(f"{task}-{arm}", seed, sp, work))
                    if args.json:
                        settings["total_wall_s"] = time.perf_counter() - started
                        Path(args.json).write_text(json.dumps({"machine": m, "settings": settings,
                                                               "results": results}, indent=2, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(results, settings, m))
    print(f"\nTotal wall time: {(time.perf_counter() - started) / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
