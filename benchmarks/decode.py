"""Decode throughput of an image folder: how fast hpsearch turns files into training data.

A generated folder in the Tiny ImageNet layout (JPEG files, 64x64 by default, 10k images) is read
the two ways hpsearch reads folders, each timed in the same run:

  in memory   decoded once into one uint8 tensor (what `in_memory: auto|true` does at a worker's
              start): single-process (the baseline) and with DataLoader processes (what hpsearch
              uses for folders of 2,000 files or more)
  streamed    `in_memory: false`: one pass of training batches (decode + device-side augmentation)

Needs torch, torchvision (Pillow) and numpy only:
    python benchmarks/decode.py
    python benchmarks/decode.py --images 10000 --size 64 --image-size 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

# Runnable from a plain checkout on a GPU box where hpsearch is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpsearch.engine import data as data_mod
from hpsearch.engine.data import DataConfig, _decode_all, clear_data_cache, load_data
from hpsearch.engine.datasets import _scan_imagefolder
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD
from hpsearch.engine.synthetic import write_image_folder

CLASSES = 100  # Tiny ImageNet has 200; 100 keeps the folder's generation quick


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="training images in the folder")
    parser.add_argument("--size", type=int, default=64, help="pixel size of the files (Tiny ImageNet: 64)")
    parser.add_argument("--image-size", type=int, default=64, help="task.data.image_size decoded to")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()

    per_class = max(1, args.images // CLASSES)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"torch {torch.__version__}",
                     "images": per_class * CLASSES, "file_size": args.size, "image_size": args.image_size,
                     "loader_processes": data_mod._loader_workers()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiny"
        seconds, _ = timed(lambda: write_image_folder(root, "tinyimagenet", CLASSES, per_class, 1, size=args.size))
        print(f"generated {per_class * CLASSES} JPEG files of {args.size}px in {seconds:.1f}s")
        train, _, _ = _scan_imagefolder(DataConfig("imagefolder", root=str(root)))
        n = len(train)

        for label, processes in (("single_process", 0), ("dataloader_processes", data_mod._loader_workers())):
            seconds, part = timed(lambda p=processes: _decode_all(train, args.image_size, workers=p))
            assert part.images.shape == (n, 3, args.image_size, args.image_size)
            results[label] = {"seconds": seconds, "images_per_second": n / seconds, "processes": processes}
            print(f"in memory, {label} ({processes} processes): {n / seconds:,.0f} images/s")

        cfg = DataConfig("imagefolder", root=str(root), image_size=args.image_size, in_memory=False)
        task = load_data(cfg, args.device, IMAGENET_MEAN, IMAGENET_STD)
        g = torch.Generator(device=args.device).manual_seed(0)

        def one_pass() -> int:
            seen = 0
            for x, _ in task.train.batches(256, shuffle=True, augment=True, generator=g):
                seen += len(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return seen

        seconds, seen = timed(one_pass)
        results["streamed"] = {"seconds": seconds, "images_per_second": seen / seconds}
        print(f"streamed, one epoch of batches: {seen / seconds:,.0f} images/s")
        clear_data_cache()
    base = results["single_process"]["images_per_second"]
    for key in ("dataloader_processes", "streamed"):
        results[key]["ratio"] = results[key]["images_per_second"] / base
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
