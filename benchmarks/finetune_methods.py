"""Fine-tuning methods and distillation: do the new search dimensions pay off? Measured, not asserted.

No pretrained ImageNet weights are available offline, so the benchmark makes its own transfer task from
scikit-learn's digits (offline), written as two image folders (PNG, upscaled from 8x8 to 32 px):

  source  digits 0-4: the "pretraining" data set (all of its training images).
  target  digits 5-9: the task searched, with few labelled images (--per-class per class in train/, 20% of
          every class held out in val/, which hpsearch reads as the test split; hpsearch's val_fraction
          carves the validation split out of train/ with the study's seed).

Step 0, once: `hpsearch train pretrain.yaml` trains ResNet-18 (weights none) on the source classes with fixed
values; its best.pt (a 5-class head) is rewritten as torchvision builds ResNet-18 (the 1000-class head,
freshly initialised), which is what `task.model.weights: <file>` loads before hpsearch puts a new 5-class head
on (hpsearch/engine/models.py `_from_file`: a file whose head size differs from the task's is loaded as torchvision
builds the model, then the head is replaced). The source task's test accuracy is reported.

(a) Fine-tuning dimensions. Per seed, two searches of the target task with the same budget (--trials trials,
    hpsearch's default sampler and pruner: TPE with max(5, min(10, trials // 4)) startup trials, seeded with the
    seed; median pruning after a 2-epoch warm-up), both starting from the pretrained file:
      plain     lr, batch_size, epochs (1..--epochs), optimizer (sgd | adamw), with `freeze: none` (the default):
                every layer trains at one rate.
      finetune  the same plus `freeze` none | backbone | partial, `unfrozen_blocks` 1..4 (when partial) and
                `backbone_lr_scale` 0.01..1 (log).
      scratch   (optional, --arms) plain's space with weights none: what the pretraining is worth at all.
(b) Distillation. Per seed, the winner of that seed's `finetune` search (or `plain` when finetune did not run)
    is exported (`hpsearch best --export`) and becomes the teacher (`task.teacher: {export: DIR}`) of a small
    student trained from scratch (--student, default shufflenet_v2_x0_5), with the same budget:
      student   lr, batch_size, epochs (1..--student-epochs), optimizer; no teacher.
      distill   the same plus `distill_alpha` 0.1..0.9 and `distill_temperature` 1..8 (log).

Each search is `python -m hpsearch run space.yaml` in its own temporary folder (a subprocess, as a user runs
it; `resources: {devices: cpu, trials_per_device: --slots}`), read back with Optuna, and `python -m hpsearch
best space.yaml --evaluate --format json` gives its winner's test accuracy. Reported per arm, median and
min-max over the seeds: the best validation accuracy (what the search maximises), the winner's test accuracy,
the epochs trained (all trials, pruned ones included), and the wall time of `hpsearch run` (start to exit;
process start-up included, `best --evaluate` not). A seed is the sampler's seed and the validation split's
(hpsearch carves it with the study seed), the same for every arm of that seed; the pretrained file is shared.
hpsearch seeds trial n's sampler with seed + n, so the random startup trials of two arms of one seed draw the
same values for the parameters they share (listed first): the arms differ where their spaces differ. It also
means seed s+1's trial n draws what seed s's trial n+1 drew: adjacent seeds are not independent searches.

Commands (from the repository root, with hpsearch installed, e.g. `pip install -e .`):

    python benchmarks/finetune_methods.py                               # 3 seeds x 12 trials x 4 arms, 16 px
    python benchmarks/finetune_methods.py --json finetune_methods.json  # ... and the raw results
    python benchmarks/finetune_methods.py --arms plain,finetune,scratch,student,distill
    python benchmarks/finetune_methods.py --smoke                       # 1 seed x 2 trials x 1 epoch (~2 min)
    python benchmarks/finetune_methods.py --report finetune_methods.json  # the table of a (partial) --json

Time on the project's 2-core CPU VM: ResNet-18 and ShuffleNetV2-x0.5 at 16 px train ~600-800 images/s there
(an epoch of the target task's 300 training images, with evaluation, ~0.5 s); every search pays ~10-15 s of
process start-up, data loading and the end-of-run report, and `best --evaluate` ~5 s more, so a search of 12
trials takes about 30-60 s, the default run (3 seeds x 4 arms + pretraining) about 10-12 min, and --smoke
about 2 min. See docs/benchmarks.md, section 8, for a measured run. Close other work first: a busy core slows
every multi-threaded trial.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from search_quality import _spread, _tail, machine, machine_line  # noqa: E402

ARMS = ("plain", "finetune", "scratch", "student", "distill")
ARM_TITLES = {
    "plain": "(a) pretrained, `freeze: none`, lr/batch/epochs/optimizer searched",
    "finetune": "(a) pretrained, + freeze/unfrozen_blocks/backbone_lr_scale searched",
    "scratch": "(a) reference: weights none, plain's space",
    "student": "(b) student from scratch, no teacher",
    "distill": "(b) student + teacher, + distill_alpha/distill_temperature searched",
}
MODEL = "resnet18"
STUDY = "finetune-methods"
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
TEST_SHARE = 0.2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def write_digits_folders(root: Path, per_class: int) -> tuple[Path, Path]:
    """digits 0-4 (every training image) and 5-9 (per_class training images per class) as image folders.

    Each class's images are shuffled with a fixed seed; TEST_SHARE of them go to val/ (hpsearch's test split for
    an image folder), the rest to train/ (the source keeps all of them, the target the first per_class).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images).float().unsqueeze(1) * (255 / 16)
    grey = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = grey.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    rng = np.random.default_rng(0)
    folders = []
    for name, classes, keep in (("source", SOURCE_CLASSES, None), ("target", TARGET_CLASSES, per_class)):
        folder = root / name
        for c in classes:
            idx = np.flatnonzero(digits.target == c)
            rng.shuffle(idx)
            n_test = round(len(idx) * TEST_SHARE)
            test, train = idx[:n_test], idx[n_test:]
            if keep is not None:
                train = train[:keep]
            for split, part in (("val", test), ("train", train)):
                out = folder / split / f"digit{c}"
                out.mkdir(parents=True)
                for i in part:
                    Image.fromarray(images[i]).convert("RGB").save(out / f"{i}.png")
        folders.append(folder)
    return folders[0], folders[1]


# --------------------------------------------------------------------------- spaces


def common_space(max_epochs: int) -> dict[str, Any]:
    """lr, batch_size, epochs (1..max_epochs; fixed under train when max_epochs is 1) and optimizer."""
    out: dict[str, Any] = {
        "lr": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
        "epochs": {"type": "int", "low": 1, "high": max_epochs},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    }
    if max_epochs <= 1:
        del out["epochs"]
    return out


def space(arm: str, seed: int, trials: int, max_epochs: int, image_size: int, data_root: Path,
          weights: str, slots: int, student: str, teacher: Path | None) -> dict[str, Any]:
    """The space file of one arm's search for one seed."""
    search = common_space(max_epochs)
    model: dict[str, Any] = {"name": MODEL, "weights": weights}
    task: dict[str, Any] = {}
    if arm == "scratch":
        model["weights"] = "none"
    elif arm == "finetune":
        search.update({
            "freeze": {"type": "categorical", "choices": ["none", "backbone", "partial"]},
            "unfrozen_blocks": {"type": "int", "low": 1, "high": 4, "when": {"freeze": "partial"}},
            "backbone_lr_scale": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        })
    elif arm in ("student", "distill"):
        model = {"name": student, "weights": "none"}
        if arm == "distill":
            assert teacher is not None
            task["teacher"] = {"export": str(teacher)}
            search.update({
                "distill_alpha": {"type": "float", "low": 0.1, "high": 0.9},
                "distill_temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True},
            })
    return {
        "study": {
            "name": STUDY,
            "metric": "val_accuracy",
            "direction": "maximize",
            "n_trials": trials,
            # hpsearch's defaults otherwise: TPE with max(5, min(10, trials // 4)) startup trials, median pruning
            # with a 2-epoch warm-up.
            "sampler": {"name": "tpe", "seed": seed},
        },
        "task": {
            "model": model,
            "data": {"name": "imagefolder", "root": str(data_root), "val_fraction": 0.25,
                     "image_size": image_size, "augment": "none"},
            **task,
        },
        "train": {"momentum": 0.9, "scheduler": "cosine", "label_smoothing": 0.0,
                  **({} if "epochs" in search else {"epochs": 1})},
        "search_space": search,
        "resources": {"devices": "cpu", "trials_per_device": slots},
        "tracking": {"uri": "sqlite:///mlruns/mlflow.db", "checkpoints": "complete"},
    }


# --------------------------------------------------------------------------- running hpsearch


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


HP = [sys.executable, "-m", "hpsearch"]


def pretrain(work: Path, source: Path, epochs: int, image_size: int) -> dict[str, Any]:
    """`hpsearch train` of ResNet-18 on the source classes; its best.pt rewritten with torchvision's own head."""
    import torch
    import torchvision
    import yaml

    folder = work / "pretrain"
    folder.mkdir()
    config = {
        "study": {"name": "pretrain", "metric": "val_accuracy", "sampler": {"name": "tpe", "seed": 0}},
        "task": {"model": {"name": MODEL, "weights": "none"},
                 "data": {"name": "imagefolder", "root": str(source), "val_fraction": 0.1,
                          "image_size": image_size, "augment": "none"}},
        "train": {"lr": 2.0e-3, "optimizer": "adamw", "batch_size": 64, "epochs": epochs, "scheduler": "cosine"},
        "resources": {"devices": "cpu"},
        "tracking": {"uri": "sqlite:///mlruns/mlflow.db"},
    }
    (folder / "pretrain.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    out = subprocess.run([*HP, "train", "pretrain.yaml", "--device", "cpu", "--output", "weights"], cwd=folder,
                         env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"hpsearch train exited {out.returncode} in {folder}:\n{out.stdout[-3000:]}\n"
                           f"{out.stderr[-3000:]}")
    test_acc = next((float(line.split()[2]) for line in out.stdout.splitlines()
                     if line.startswith("test accuracy ")), math.nan)
    trained = torch.load(folder / "weights" / "best.pt", map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    full = torchvision.models.get_model(MODEL, weights=None)  # as torchvision builds it: a 1000-class fc
    state = full.state_dict()
    head = [k for k in state if k.startswith("fc.")]
    assert sorted(set(state) - set(head)) == sorted(k for k in trained if not k.startswith("fc.")), "keys differ"
    state.update({k: v for k, v in trained.items() if not k.startswith("fc.")})
    path = work / "resnet18_digits0-4.pt"
    torch.save(state, path)
    log(f"pretrained {MODEL} on digits 0-4 in {seconds:.0f} s: source test accuracy {test_acc:.4f} -> {path}")
    return {"wall_s": seconds, "test_accuracy": test_acc, "epochs": epochs, "weights": str(path)}


def run_search(arm: str, seed: int, sp: dict[str, Any], work: Path, export: Path | None = None) -> dict[str, Any]:
    """`hpsearch run` of one space in a fresh folder, read back; `best --evaluate` (and `--export DIR`)."""
    import optuna
    import yaml

    from hpsearch.storage.stores import open_storage

    folder = work / f"{arm}-s{seed}"
    folder.mkdir()
    (folder / "space.yaml").write_text(yaml.safe_dump(sp, sort_keys=False))
    env = _env()
    logfile = folder / "run.log"
    started = time.perf_counter()
    with open(logfile, "w") as out:
        rc = subprocess.run([*HP, "run", "space.yaml"], cwd=folder, env=env, stdout=out,
                            stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"hpsearch run exited {rc} in {folder}:\n{_tail(logfile)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(str(folder / "studies/journal.log")))
    trials = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"no trial completed in {folder}")
    best_trial = max(complete, key=lambda t: t.value)
    cmd = [*HP, "best", "space.yaml", "--evaluate", "--format", "json", "--device", "cpu"]
    if export is not None:
        cmd += ["--export", str(export)]
    best = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if best.returncode != 0:
        raise RuntimeError(f"hpsearch best exited {best.returncode} in {folder}:\n{best.stderr}")
    record = json.loads(best.stdout)
    if not math.isclose(record["value"], best_trial.value):
        raise RuntimeError(f"hpsearch best says {record['value']}, the study's trials {best_trial.value}")
    result = {
        "arm": arm, "seed": seed, "best_value": best_trial.value, "test_accuracy": record["test_accuracy"],
        "best_params": best_trial.params, "wall_s": seconds, "trials": len(trials), "complete": len(complete),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "values": [t.value if t.state == optuna.trial.TrialState.COMPLETE else None for t in trials],
    }
    log(f"{arm} seed {seed}: best val {result['best_value']:.4f}, test {result['test_accuracy']:.4f}, "
        f"{result['complete']} complete / {result['pruned']} pruned / {result['failed']} failed, "
        f"{result['epochs']} epochs, {seconds:.0f} s; params {best_trial.params}")
    return result


# --------------------------------------------------------------------------- report


def _winner(arm: str, r: dict[str, Any]) -> str:
    """The winning trial's parameters that tell the arms apart (and its epochs)."""
    p = r["best_params"]
    parts = [f"{p.get('optimizer', '?')}", f"lr {p['lr']:.2g}" if "lr" in p else "", f"{p.get('epochs', 1)} ep"]
    if arm == "finetune":
        parts.append(f"freeze {p.get('freeze')}" + (f" {p['unfrozen_blocks']}" if "unfrozen_blocks" in p else ""))
        parts.append(f"bb×{p['backbone_lr_scale']:.2g}")
    if arm == "distill":
        parts.append(f"α {p['distill_alpha']:.2f}, T {p['distill_temperature']:.1f}")
    return ", ".join(x for x in parts if x)


def markdown(results: dict[str, list[dict]], pre: dict[str, Any] | None, settings: dict, m: dict) -> str:
    lines = [
        f"Machine: {machine_line(m)}.",
        "",
        f"Settings: {settings['seeds']} seed(s) ({', '.join(map(str, settings['seed_list']))}), "
        f"{settings['trials']} trials per search, epochs 1..{settings['epochs']} in (a), "
        f"1..{settings['student_epochs']} for the students, {settings['image_size']} px, "
        f"{settings['per_class']} training images per target class, trials_per_device {settings['slots']}, "
        f"student {settings['student']}.",
    ]
    if pre is not None:
        lines += ["", f"Pretraining ({MODEL}, digits 0-4, {pre['epochs']} epochs, `hpsearch train`): "
                      f"source test accuracy {pre['test_accuracy']:.4f}, {pre['wall_s']:.0f} s."]
    lines += [
        "",
        "| arm | best val accuracy | winner's test accuracy | epochs trained | pruned | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        rows = results.get(arm)
        if not rows:
            continue
        lines.append(
            f"| {ARM_TITLES[arm]} | {_spread([r['best_value'] for r in rows], '.3f')} "
            f"| {_spread([r['test_accuracy'] for r in rows], '.3f')} "
            f"| {_spread([r['epochs'] for r in rows], '.0f')} "
            f"| {_spread([r['pruned'] for r in rows], '.0f')} "
            f"| {_spread([r['wall_s'] for r in rows], '.0f')} |")
    lines += ["", "Median (min–max) over the seeds. Per seed (best val / test):", ""]
    for arm in ARMS:
        rows = results.get(arm)
        if rows:
            per = "; ".join(f"s{r['seed']} {r['best_value']:.3f}/{r['test_accuracy']:.3f} ({_winner(arm, r)})"
                            for r in rows)
            lines.append(f"- {arm}: {per}")
    for a, b in (("finetune", "plain"), ("distill", "student")):
        pa = {r["seed"]: r for r in results.get(a, [])}
        pb = {r["seed"]: r for r in results.get(b, [])}
        common = sorted(set(pa) & set(pb))
        if common:
            dv = [pa[s]["best_value"] - pb[s]["best_value"] for s in common]
            dt = [pa[s]["test_accuracy"] - pb[s]["test_accuracy"] for s in common]
            lines.append(f"- {a} − {b}, paired by seed: val {_spread(dv, '+.3f')}, test {_spread(dt, '+.3f')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _search_seed(args: argparse.Namespace, arms: list[str], teacher_arm: str, seed: int, work: Path,
                 target: Path, pre: dict | None):
    """Each arm's search for one seed, in order (the teacher's arm before distill's), yielded as it ends."""
    teacher = None
    for arm in arms:
        export = None
        if arm == teacher_arm and "distill" in arms:
            export = teacher = work / f"teacher-s{seed}"
        sp = space(arm, seed, args.trials, args.student_epochs if arm in ("student", "distill") else args.epochs,
                   args.image_size, target, pre["weights"] if pre else "none", args.slots, args.student, teacher)
        log(f"{arm} seed {seed}: hpsearch run ({args.trials} trials) ...")
        yield arm, run_search(arm, seed, sp, work, export)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=12, help="trials per search (every arm the same)")
    parser.add_argument("--epochs", type=int, default=6, help="most epochs a trial of (a) trains")
    parser.add_argument("--student-epochs", type=int, default=10, help="most epochs a student trains")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=80, help="training images per target class")
    parser.add_argument("--slots", type=int, default=1, help="resources.trials_per_device")
    parser.add_argument("--student", default="shufflenet_v2_x0_5")
    parser.add_argument("--arms", default="plain,finetune,student,distill",
                        help=f"comma-separated, of {','.join(ARMS)}")
    parser.add_argument("--json", metavar="OUT", help="also write the raw results (every search) here")
    parser.add_argument("--keep", metavar="DIR", help="keep the temporary folders under DIR")
    parser.add_argument("--report", metavar="JSON", help="only print the table of an earlier --json (complete or "
                        "not: it is rewritten after every search)")
    parser.add_argument("--smoke", action="store_true", help="1 seed x 2 trials x 1 epoch (students 2), "
                        "1 pretraining epoch: plumbing, not a result")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(markdown(saved["results"], saved["pretrain"], saved["settings"], saved["machine"]))
        return 0
    if args.smoke:
        args.seeds, args.trials, args.epochs, args.student_epochs, args.pretrain_epochs = 1, 2, 1, 2, 1
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; pick from {', '.join(ARMS)}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    m = machine()
    settings = {"seeds": len(seeds), "seed_list": seeds, "trials": args.trials, "epochs": args.epochs,
                "student_epochs": args.student_epochs, "pretrain_epochs": args.pretrain_epochs,
                "image_size": args.image_size, "per_class": args.per_class, "slots": args.slots,
                "student": args.student, "arms": arms, "model": MODEL, "smoke": args.smoke}
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="finetune-methods-", dir=args.keep))
    started = time.perf_counter()
    results: dict[str, list[dict]] = {a: [] for a in arms}
    pre = None
    try:
        source, target = write_digits_folders(work / "data", args.per_class)
        log(f"wrote digits 0-4 and 5-9 as image folders under {work / 'data'}")
        needs_weights = any(a in ("plain", "finetune") for a in arms)
        if needs_weights:
            pre = pretrain(work, source, args.pretrain_epochs, args.image_size)
        teacher_arm = "finetune" if "finetune" in arms else "plain"
        if "distill" in arms and teacher_arm not in arms:
            parser.error("distill needs the finetune (or plain) arm: its winner is the teacher")
        for seed in seeds:
            for arm, result in _search_seed(args, arms, teacher_arm, seed, work, target, pre):
                results[arm].append(result)
                if args.json:  # after every search, so that an interrupted run keeps what it measured
                    settings["total_wall_s"] = time.perf_counter() - started
                    write_json(args.json, m, settings, pre, results)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    settings["total_wall_s"] = total
    table = markdown(results, pre, settings, m)
    print(table)
    print(f"\nTotal wall time: {total / 60:.1f} min.")
    if args.json:
        write_json(args.json, m, settings, pre, results)
    return 0


def write_json(path: str, m: dict, settings: dict, pre: dict | None, results: dict[str, list[dict]]) -> None:
    Path(path).write_text(json.dumps({"machine": m, "settings": settings, "pretrain": pre, "results": results},
                                     indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())

