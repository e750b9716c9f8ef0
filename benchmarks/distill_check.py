"""Does distillation work with fixed hyperparameters? A student with and without its teacher, nothing searched.

`benchmarks/finetune_methods.py` compares *searches*; at a small budget the students there hardly learn, with or
without a teacher, and the search noise hides what the teacher does. This script removes the search: a
ResNet-18 teacher is trained on scikit-learn's digits (offline), saved, and loaded back as hpsearch loads a
teacher (`teacher.build_teacher`: eval mode, no grads, renormalisation when its mean/std differ); then the
same student (same seed, same data order, same fixed hyperparameters) trains with no teacher and with the
teacher at several `distill_alpha` values, for several seeds. `distill_alpha: 0` must match no teacher (the
hard loss alone); a working teacher should help most when the student has few epochs.

    OMP_NUM_THREADS=1 python benchmarks/distill_check.py [--seeds 3] [--epochs 6] [--alphas 0,0.5,0.9]
        [--student shufflenet_v2_x0_5] [--image-size 16] [--json OUT]

Prints a markdown table: the student's validation accuracy after epochs 2 and `--epochs` and at its best
epoch, median (min–max) over the seeds, and the teacher's own accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from search_quality import _spread, machine, machine_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--alphas", default="0,0.5,0.9")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--student", default="shufflenet_v2_x0_5")
    parser.add_argument("--lr", type=float, default=1e-2, help="the student's AdamW learning rate")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)

    import torch

    from hpsearch.core.data_config import DataConfig
    from hpsearch.core.hparams import HParams
    from hpsearch.engine.data import load_data
    from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
    from hpsearch.engine.teacher import build_teacher
    from hpsearch.engine.train import Trainer, evaluate, seed_everything

    started = time.perf_counter()
    norm = (IMAGENET_MEAN, IMAGENET_STD)
    data = load_data(DataConfig("digits", image_size=args.image_size, val_fraction=0.2, augment="none"), "cpu",
                     *norm)
    seed_everything(0)
    trainer = Trainer(build_model("resnet18", 10, dropout=0.2), data,
                      HParams(lr=3e-3, epochs=args.teacher_epochs, batch_size=64, optimizer="adamw", dropout=0.2),
                      device="cpu")
    trainer.fit()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher.pt"
        torch.save(trainer.best_state_dict_cpu(), path)
        teacher = build_teacher("resnet18", 10, str(path), norm, norm)  # as a study's worker loads it
    teacher_val = evaluate(teacher, data.val, device="cpu")[1]
    print(f"teacher: ResNet-18, {args.teacher_epochs} epochs, val accuracy {teacher_val:.3f}", flush=True)

    arms: list[float | None] = [None, *(float(a) for a in args.alphas.split(","))]
    results: dict[str, list[list[float]]] = {}
    for seed in range(args.seeds):
        for alpha in arms:
            seed_everything(seed)
            extra = {} if alpha is None else {"distill_alpha": alpha, "distill_temperature": args.temperature}
            hp = HParams(lr=args.lr, epochs=args.epochs, batch_size=64, optimizer="adamw", **extra)
            student = Trainer(build_model(args.student, 10), data, hp, device="cpu", seed=seed,
                              teacher=None if alpha is None else teacher)
            t0 = time.perf_counter()
            student.fit()
            curve = [s.val_accuracy for s in student.history]
            label = "no teacher" if alpha is None else f"α {alpha:g}"
            results.setdefault(label, []).append(curve)
            print(f"seed {seed} {label}: {' '.join(f'{v:.3f}' for v in curve)} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)

    m = machine()
    lines = [f"Machine: {machine_line(m)}.",
             f"Student {args.student} from scratch at {args.image_size} px on digits ({len(data.train)} training "
             f"images, {len(data.val)} validation), AdamW lr {args.lr:g}, batch 64, {args.epochs} epochs, T "
             f"{args.temperature:g}; teacher ResNet-18 (val {teacher_val:.3f}); seeds 0..{args.seeds - 1}.",
             "", f"| student | val acc. epoch 2 | val acc. epoch {args.epochs} | best val acc. |", "|---|---|---|---|"]
    for label, curves in results.items():
        lines.append(f"| {label} | {_spread([c[1] for c in curves], '.3f')} | "
                     f"{_spread([c[-1] for c in curves], '.3f')} | {_spread([max(c) for c in curves], '.3f')} |")
    lines.append(f"\nTotal wall time: {(time.perf_counter() - started) / 60:.1f} min.")
    print("\n".join(lines))
    if args.json:
        out: dict[str, Any] = {"machine": m, "settings": vars(args), "teacher_val": teacher_val, "curves": results}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
