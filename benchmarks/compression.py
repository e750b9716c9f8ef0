"""Compression: what pruning and int8 quantization cost in accuracy, and what they save in size and latency.

Per model (default MobileNetV2 and ResNet-18, weights none), on scikit-learn's digits (offline; hpsearch's
split: 20% held out for testing, 20% of the rest for validation, no augmentation) at --image-size px:

  baseline     trained from scratch with hpsearch's Trainer and fixed values (AdamW, lr 3e-3, batch 64,
               cosine schedule, --epochs epochs); its best epoch by validation accuracy is kept.
  pruned NN%   the baseline, global L1 magnitude pruning of NN% of its Conv2d and Linear weights
               (compression.prune_global), fine-tuned --finetune-epochs epochs with the masks on (AdamW, lr
               1e-3, cosine; best epoch by validation accuracy), then made permanent. Also reported: the
               validation accuracy right after pruning, before the fine-tune, and the layer global pruning
               took the largest share of (a layer pruned nearly whole cuts the network).
  int8         the baseline quantized to int8 (compression.quantize_int8: torchao's PT2E flow with the
               X86InductorQuantizer, lowered to oneDNN int8 kernels), calibrated on the first
               --calibration-batches batches of 64 training images.
  pruned50+int8  the 50%-pruned, fine-tuned model, quantized the same way (needs 0.5 in --amounts).

Each variant: validation and test accuracy (hpsearch.engine.train.evaluate), and costs.py's size_mb (the deployable
file: a float model's state_dict, an int8 model's exported program), params_m (non-zero parameters) and CPU
latency_ms at batch 1, each also as a ratio to the baseline of the same run. Latency is measured after every
variant of a model is built, in --latency-rounds interleaved rounds (each a costs.latency_ms median of
--latency-repeats passes after 10 warm-up passes), and the median of the rounds is reported: load that comes
and goes on a shared machine then falls on every variant alike. The torch thread count is left as it is
(OMP_NUM_THREADS, or torch's default) and printed with the machine.

Commands (from the repository root, with hpsearch and torchao installed):

    OMP_NUM_THREADS=1 python benchmarks/compression.py                       # both models, ~8-9 min
    OMP_NUM_THREADS=1 python benchmarks/compression.py --json compression.json
    python benchmarks/compression.py --models resnet18 --epochs 3 --finetune-epochs 1   # quick look
    python benchmarks/compression.py --report compression.json               # the table of an earlier --json

Time on the project's 2-core CPU VM with one thread (while other jobs shared it): an epoch of the 1150
training images at 32 px takes ~9 s for MobileNetV2 and ~13 s for ResNet-18 (with evaluation); quantizing
takes 30-45 s for MobileNetV2 (most of it the lowering's pattern matching over its 52 convolutions) and
~10 s for ResNet-18. See docs/benchmarks.md, section 9, for a measured run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from search_quality import cpu_facts  # noqa: E402
from torch import nn  # noqa: E402

from hpsearch.core.hparams import HParams  # noqa: E402
from hpsearch.deploy import costs  # noqa: E402
from hpsearch.deploy.compression import (  # noqa: E402
    PRUNABLE,
    Int8Model,
    calibration_batches,
    int8_reduce_range,
    make_permanent,
    prune_global,
    quantize_int8,
    sparsity,
)
from hpsearch.engine.data import DataConfig, load_data  # noqa: E402
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model  # noqa: E402
from hpsearch.engine.train import Trainer, evaluate, seed_everything  # noqa: E402

MODELS = ("mobilenet_v2", "resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0")
TITLES = {"mobilenet_v2": "MobileNetV2", "resnet18": "ResNet-18", "mobilenet_v3_small": "MobileNetV3-Small",
          "shufflenet_v2_x1_0": "ShuffleNetV2-x1.0"}
TRAIN = dict(lr=3e-3, optimizer="adamw", batch_size=64, scheduler="cosine")
FINETUNE = dict(lr=1e-3, optimizer="adamw", batch_size=64, scheduler="cosine")
LATENCY_WARMUP = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import torchvision

    return {**cpu_facts(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "torchao": version("torchao"),
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "int8_reduce_range": int8_reduce_range(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def machine_line(m: dict[str, Any]) -> str:
    omp = f", OMP_NUM_THREADS={m['omp_num_threads']}" if m["omp_num_threads"] else ""
    vnni = "no VNNI: int8 activations 7-bit" if m["int8_reduce_range"] else "VNNI"
    return (f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['cpu_capability']} ({vnni}), "
            f"GPU: {m['gpu']}, torch {m['torch']}, torchvision {m['torchvision']}, torchao {m['torchao']}, "
            f"Python {m['python']}, {m['torch_threads']} torch thread(s){omp}")


# --------------------------------------------------------------------------- one model


def train(model: nn.Module, data, epochs: int, values: dict[str, Any], seed: int) -> tuple[nn.Module, float]:
    """Train in place and keep the best epoch's weights (by validation accuracy); (model, seconds)."""
    start = time.perf_counter()
    trainer = Trainer(model, data, HParams(epochs=epochs, **values), device="cpu", seed=seed)
    trainer.fit()
    best = trainer.best_state_dict_cpu()
    assert best is not None  # at least one epoch ran
    model.load_state_dict(best)
    return model, time.perf_counter() - start


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """The share of zero weights of each Conv2d and Linear layer, by name: global pruning takes more from some
    layers than from others, and a layer pruned (nearly) whole cuts the network."""
    return {name: float((m.weight == 0).float().mean()) for name, m in model.named_modules()
            if isinstance(m, PRUNABLE)}


def accuracy(model: nn.Module, data) -> dict[str, float]:
    return {"val_accuracy": evaluate(model, data.val, device="cpu")[1],
            "test_accuracy": evaluate(model, data.test, device="cpu")[1]}


def run_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Every variant of one model: accuracies, costs and timings, keyed by variant."""
    size = args.image_size
    data = load_data(DataConfig("digits", image_size=size, val_fraction=0.2, augment="none"), "cpu",
                     IMAGENET_MEAN, IMAGENET_STD)
    seed_everything(args.seed)
    base, seconds = train(build_model(name, data.num_classes), data, args.epochs, TRAIN, args.seed)
    variants: dict[str, nn.Module] = {"baseline": base}
    rows: dict[str, dict[str, Any]] = {"baseline": {"seconds": seconds, **accuracy(base, data)}}
    log(f"{name}: baseline trained in {seconds:.0f} s, val {rows['baseline']['val_accuracy']:.3f}")
    calibration = calibration_batches(data.train, batches=args.calibration_batches)
    for amount in args.amounts:
        key = f"pruned {amount:.0%}"
        pruned = copy.deepcopy(base)
        prune_global(pruned, amount)
        before = evaluate(pruned, data.val, device="cpu")[1]
        pruned, seconds = train(pruned, data, args.finetune_epochs, FINETUNE, args.seed)
        make_permanent(pruned)
        variants[key] = pruned
        rows[key] = {"seconds": seconds, "val_before_finetune": before, **accuracy(pruned, data)}
        log(f"{name}: {key}: val {before:.3f} pruned, {rows[key]['val_accuracy']:.3f} after {seconds:.0f} s "
            f"of fine-tuning")
    quantize = [("int8", base)]
    if 0.5 in args.amounts:
        quantize.append(("pruned 50% + int8", variants["pruned 50%"]))
    for key, source in quantize:
        start = time.perf_counter()
        q = quantize_int8(source, calibration, size)
        variants[key] = q
        rows[key] = {"seconds": time.perf_counter() - start, **accuracy(q, data)}
        log(f"{name}: {key}: quantized in {rows[key]['seconds']:.0f} s, val {rows[key]['val_accuracy']:.3f}")
    for key, model in variants.items():
        suffix = ".pt2" if key.endswith("int8") else ".pt"
        path = costs.save_deployable(model, work / f"{name}-{key.replace(' ', '').replace('%', '')}{suffix}")
        rows[key].update(size_mb=costs.size_mb(path), params_m=costs.params_m(model))
        if not isinstance(model, Int8Model):  # its weights are int8 tensors: params_m shows its zeros
            layers = layer_sparsity(model)
            worst = max(layers, key=lambda k: layers[k])
            rows[key].update(sparsity=sparsity(model), max_layer=worst, max_layer_sparsity=layers[worst])
    rounds: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(args.latency_rounds):
        for key, model in variants.items():
            rounds[key].append(costs.latency_ms(model, size, "cpu", warmup=LATENCY_WARMUP,
                                                repeats=args.latency_repeats))
    for key in variants:
        rows[key]["latency_ms"] = statistics.median(rounds[key])
        rows[key]["latency_rounds_ms"] = rounds[key]
    for row in rows.values():
        for cost in ("size_mb", "params_m", "latency_ms"):
            row[f"{cost}_ratio"] = row[cost] / rows["baseline"][cost]
    return rows


# --------------------------------------------------------------------------- report


def markdown(results: dict[str, dict[str, dict[str, Any]]], settings: dict[str, Any], m: dict[str, Any]) -> str:
    lines = [
        f"Machine: {machine_line(m)}.",
        "",
        f"Settings: digits at {settings['image_size']} px, baseline {settings['epochs']} epochs (AdamW lr 3e-3, "
        f"batch 64, cosine), pruning fine-tune {settings['finetune_epochs']} epochs (AdamW lr 1e-3, cosine, masks "
        f"on), int8 calibrated on {settings['calibration_batches']} batches of 64 training images, latency the "
        f"median of {settings['latency_rounds']} interleaved rounds of {settings['latency_repeats']} batch-1 "
        f"passes, seed {settings['seed']}.",
        "",
        "| model | variant | val acc | test acc | size MB (× base) | params M non-zero (× base) "
        "| latency ms (× base) | val right after pruning | sparsity (most-pruned layer) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for key, r in rows.items():
            before = f"{r['val_before_finetune']:.3f}" if "val_before_finetune" in r else ""
            zeros = (f"{r['sparsity']:.2f} ({r['max_layer_sparsity']:.2f} `{r['max_layer']}`)"
                     if "max_layer" in r and r["sparsity"] > 0 else "")
            lines.append(
                f"| {TITLES.get(name, name)} | {key} | {r['val_accuracy']:.3f} | {r['test_accuracy']:.3f} "
                f"| {r['size_mb']:.2f} ({r['size_mb_ratio']:.2f}) | {r['params_m']:.3f} ({r['params_m_ratio']:.2f}) "
                f"| {r['latency_ms']:.2f} ({r['latency_ms_ratio']:.2f}) | {before} | {zeros} |")
    n_val, n_test = settings.get("val_images"), settings.get("test_images")
    if n_val and n_test:
        lines += ["", f"Validation split {n_val} images (steps of {1 / n_val:.4f}), test split {n_test} "
                      f"({1 / n_test:.4f})."]
    return "\n".join(lines)


def write_json(path: str, m: dict, settings: dict, results: dict) -> None:
    Path(path).write_text(json.dumps({"machine": m, "settings": settings, "results": results}, indent=2))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet18", help=f"comma-separated, of {','.join(MODELS)}")
    parser.add_argument("--epochs", type=int, default=10, help="baseline training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tune epochs after each pruning")
    parser.add_argument("--amounts", default="0.3,0.5,0.7", help="pruning amounts, comma-separated")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the raw results here")
    parser.add_argument("--report", metavar="JSON", help="only print the table of an earlier --json")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(markdown(saved["results"], saved["settings"], saved["machine"]))
        return 0
    models = [x.strip() for x in args.models.split(",") if x.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; pick from {', '.join(MODELS)}")
    args.amounts = [float(a) for a in args.amounts.split(",") if a.strip()]
    if not all(0 < a < 1 for a in args.amounts):
        parser.error("--amounts must be in (0, 1)")
    m = machine()
    settings: dict[str, Any] = {k: getattr(args, k) for k in ("epochs", "finetune_epochs", "amounts", "image_size",
                                                                "calibration_batches", "latency_rounds",
                                                                "latency_repeats", "seed")}
    settings["models"] = models
    data = load_data(DataConfig("digits", image_size=args.image_size, val_fraction=0.2, augment="none"), "cpu",
                     IMAGENET_MEAN, IMAGENET_STD)
    settings.update(train_images=len(data.train), val_images=len(data.val), test_images=len(data.test))
    log(f"machine: {machine_line(m)}")
    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="compression-") as work:
        for name in models:
            results[name] = run_model(name, args, Path(work))
            settings["total_wall_s"] = time.perf_counter() - started
            if args.json:  # after every model, so that an interrupted run keeps what it measured
                write_json(args.json, m, settings, results)
    print(markdown(results, settings, m))
    print(f"\nTotal wall time: {(time.perf_counter() - started) / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
