"""Training throughput of one trial: the seed's DataLoader pipeline vs hpsearch's Trainer (eager, CUDA graphs).

MobileNetV2, 10 classes, CIFAR-shaped random data at 32×32, SGD with momentum, batch 128 and 512, all
measured in one run on one device:

  (a) seed     torchvision DataLoader (2 workers) over PIL images, RandomCrop(32, padding=4) +
               RandomHorizontalFlip + ToTensor + Normalize; fp32 eager train step
  (b) eager    hpsearch Trainer, data and augmentation on the device (bf16 + channels_last on CUDA)
  (c) graphs   the same with the whole train step captured in one CUDA graph (CUDA only)

(b) and (c) are a trial's own numbers: a two-epoch fit, reporting the second epoch's
images_per_second (the first one pays cuDNN autotuning and graph capture). Then the time from a
trial's start to its first step in a warm process: a second trial at an already-seen batch size
builds its model and Trainer and takes one step.

Needs torch and torchvision only:
    python benchmarks/trial_throughput.py --device cuda
    python benchmarks/trial_throughput.py --device cpu --steps 3 --json cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms as T

# Runnable from a plain checkout on a GPU box where hpsearch is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpsearch.core.hparams import HParams
from hpsearch.engine.data import DataConfig, clear_data_cache, load_data
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from hpsearch.engine.train import GRAPH_WARMUP_STEPS, Trainer, TrainSettings, seed_everything

CIFAR_TRAIN = 50_000
WARMUP_BATCHES = 3  # (a): worker start-up and first-batch costs stay out of the timing
VAL_FRACTION = 0.02  # (b)/(c): a small validation split; evaluation is not part of images/s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hparams(batch_size: int, epochs: int = 2) -> HParams:
    return HParams(lr=0.01, batch_size=batch_size, epochs=epochs, optimizer="sgd", momentum=0.9)


class PILImages(torch.utils.data.Dataset):
    """What a hand-written CIFAR loop feeds its DataLoader: one PIL image at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def seed_pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int, steps: int, device: torch.device) -> float:
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = torch.utils.data.DataLoader(PILImages(images, labels, transform), batch_size=batch_size, shuffle=True,
                                         num_workers=2, drop_last=True, pin_memory=device.type == "cuda")
    model = torchvision.models.mobilenet_v2(num_classes=10).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = iter(loader)
    for i in range(WARMUP_BATCHES + steps):
        if i == WARMUP_BATCHES:
            sync(device)
            start = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def fake_task(batch_size: int, steps: int, device: torch.device):
    """Random uint8 CIFAR-shaped data on the device, with at least `steps` training batches."""
    samples = math.ceil(steps * batch_size / (1 - VAL_FRACTION)) + 10
    return load_data(DataConfig("fake", samples=samples, val_fraction=VAL_FRACTION), device, IMAGENET_MEAN,
                     IMAGENET_STD)


def trainer_pipeline(batch_size: int, steps: int, device: torch.device, settings: TrainSettings) -> float:
    seed_everything(0)
    trainer = Trainer(build_model("mobilenet_v2", 10), fake_task(batch_size, steps, device), hparams(batch_size),
                      device=device, settings=settings)
    second = trainer.fit()[1].images_per_second
    trainer.release()
    return second


def first_step(batch_size: int, steps: int, device: torch.device, settings: TrainSettings, graphs: bool) -> dict:
    """Seconds from a warm trial's start (an earlier trial already ran this batch size) to its first step,
    and, with graphs, to its first graph replay."""
    task = fake_task(batch_size, max(steps, GRAPH_WARMUP_STEPS + 1), device)
    result = {}
    for _ in range(2):  # the first trial warms the process; the second is the one measured
        sync(device)
        start = time.perf_counter()
        trainer = Trainer(build_model("mobilenet_v2", 10), task, hparams(batch_size), device=device,
                          settings=settings)
        batches = task.train.batches(batch_size, shuffle=True, augment=True, drop_last=True,
                                     generator=trainer.generator)
        trainer.train_step(*next(batches))
        sync(device)
        result["first_step_s"] = time.perf_counter() - start
        if graphs:
            for _ in range(GRAPH_WARMUP_STEPS):  # the rest of the warm-up, the capture, the first replay
                trainer.train_step(*next(batches))
            sync(device)
            result["first_replay_s"] = time.perf_counter() - start
        trainer.release()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed training steps per measurement (default: one CIFAR-10 epoch)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    graphs = device.type == "cuda"

    images = torch.randint(0, 256, (CIFAR_TRAIN, 32, 32, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).numpy()
    labels = np.random.default_rng(0).integers(0, 10, CIFAR_TRAIN)
    modes = {"eager": TrainSettings(cuda_graphs="off")}
    if graphs:
        modes["graphs"] = TrainSettings(cuda_graphs="auto")

    results: dict = {"device": torch.cuda.get_device_name(device) if graphs else f"CPU ({os.cpu_count()} cores)",
                     "torch": torch.__version__, "torchvision": torchvision.__version__,
                     "images_per_second": {}, "ratio_vs_seed": {}, "warm_trial_start": {}}
    for bs in args.batch_sizes:
        steps = args.steps or CIFAR_TRAIN // bs - WARMUP_BATCHES
        ips = {"seed": seed_pipeline(images, labels, bs, steps, device)}
        for mode, settings in modes.items():
            ips[mode] = trainer_pipeline(bs, steps, device, settings)
        results["images_per_second"][bs] = ips
        results["ratio_vs_seed"][bs] = {m: v / ips["seed"] for m, v in ips.items() if m != "seed"}
        results["warm_trial_start"][bs] = {m: first_step(bs, steps, device, s, m == "graphs")
                                          for m, s in modes.items()}
        clear_data_cache()

    print(f"trial throughput: MobileNetV2, 10 classes, 32x32, SGD momentum — {results['device']}, "
          f"torch {results['torch']}, steps {args.steps or 'one epoch'}")
    header = f"{'pipeline':<44}" + "".join(f"{'batch ' + str(bs):>22}" for bs in args.batch_sizes)
    print(header)
    print("-" * len(header))
    names = {"seed": "(a) seed: DataLoader(2 workers)+PIL, fp32",
             "eager": "(b) hpsearch Trainer, eager" + (" (bf16, NHWC)" if graphs else " (fp32)"),
             "graphs": "(c) hpsearch Trainer, CUDA graph"}
    for mode in ["seed", *modes] + ([] if graphs else ["graphs"]):
        cells = []
        for bs in args.batch_sizes:
            if mode not in results["images_per_second"][bs]:
                cells.append("n/a (CUDA only)")
                continue
            value = results["images_per_second"][bs][mode]
            ratio = results["ratio_vs_seed"][bs].get(mode)
            cells.append(f"{value:,.0f} img/s" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
        print(f"{names[mode]:<44}" + "".join(f"{c:>22}" for c in cells))
    print("\nwarm process, second trial at a seen batch size: start -> first step done"
          + (" / -> first graph replay" if graphs else ""))
    for bs in args.batch_sizes:
        for mode, t in results["warm_trial_start"][bs].items():
            extra = f" / {t['first_replay_s'] * 1e3:.0f} ms" if "first_replay_s" in t else ""
            print(f"  batch {bs:<4} {mode:<7} {t['first_step_s'] * 1e3:.0f} ms{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
