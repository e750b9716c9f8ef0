"""What a trained model costs to deploy: CPU (or GPU) latency, parameters, file size; objectives a
multi-objective study can minimise beside accuracy.

- params_m: non-zero parameters in millions, so that pruning shows. A float model counts every parameter
  (BatchNorm's weight and bias too, not its running statistics; from scratch its biases start at zero and
  are not counted until trained). An int8 model (compression.Int8Model) counts its int8 weights and float
  biases, after BatchNorm was folded into the convolutions, and not the weights that round to zero in int8
  (~1% of them): ~1-2% fewer than its float model; quantization scales and zero points are not counted.
- size_mb: the bytes of the deployable file / 1e6. The deployable file (save_deployable) is what a user
  ships and loads back: for a float model `torch.save(model.state_dict())` (loads into the architecture
  built by hpsearch.engine.models.build_model), for an int8 model its exported program (`torch.export.save`, a
  .pt2 file that compression.load_int8 reads back; besides the int8 weights it holds the graph, float biases
  and per-channel scales, so it is ~1/4 of the float file for ResNet-18 but ~1/3 for MobileNetV2 and ~0.4
  for ShuffleNetV2 and MobileNetV3-Small). Both are dense: a pruned weight is a zero that still takes its
  4 bytes (1 in int8), so pruning lowers params_m but not size_mb; only a sparse format or a compressor
  (zip of the file) would turn the zeros into bytes saved, and neither is used here.
- latency_ms: the median wall time of a forward pass of one image (batch 1), in eval mode, under
  torch.inference_mode, float32 input (an int8 model quantizes it itself), after warm-up passes, in the
  format training computed in (LatencyFormat: bf16 autocast and channels_last on CUDA, as train.py trains).
  On CUDA the device is synchronised before and after each timed pass, after CUDA_WARMUP passes (clocks,
  cuDNN's kernel choices and the allocator settle over tens of them); trials sharing the GPU still run
  beside it, so a GPU latency is an upper bound. Costs.method() says where and how it was measured. The
  torch thread count is left as the caller set it (torch.set_num_threads; OMP_NUM_THREADS at start-up): it
  changes the result, so set it as the deployment will run, and record it with the number.

Torch-only on purpose (runs on boxes that lack the rest of hpsearch's dependencies); compression, which
this imports for Int8Model, imports torchao only when a model is quantized.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from hpsearch.core.hparams import COST_METRICS
from hpsearch.deploy.compression import Int8Model

# (warm-up, timed) batch-1 passes per device type; a GPU needs tens of passes before its timings settle.
CPU_PASSES = (3, 15)
CUDA_WARMUP = 25
CUDA_PASSES = (CUDA_WARMUP, 50)


@dataclass(frozen=True)
class LatencyFormat:
    """How the timed passes compute: as the trial trained (train.training_format)."""

    bf16: bool = False  # under bf16 autocast
    channels_last: bool = False  # model and input in channels_last

    def describe(self) -> str:
        return ("bf16 autocast" if self.bf16 else "fp32") + (", channels_last" if self.channels_last else "")


@dataclass(frozen=True)
class Costs:
    latency_ms: float  # median batch-1 forward pass
    params_m: float  # non-zero parameters, millions
    size_mb: float  # deployable file, 1e6 bytes
    latency_device: str = "cpu"  # how latency was measured (method(); not objectives, so not in as_dict)
    latency_precision: str = "fp32"

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COST_METRICS}

    def method(self) -> dict[str, str]:
        return {"latency_device": self.latency_device, "latency_precision": self.latency_precision}


def describe_device(device: torch.device | str, threads: int | None = None) -> str:
    """Where a latency is measured, as recorded with it: the CPU with its torch thread count (`threads`, default
    the current one), or the GPU with its name."""
    device = torch.device(device)
    if device.type == "cpu":
        n = torch.get_num_threads() if threads is None else threads
        return f"cpu, {n} thread{'s' if n > 1 else ''}"
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def params_m(model: nn.Module) -> float:
    """Non-zero parameters in millions: every parameter, plus the int8 weights a quantized model keeps as
    buffers (its biases are parameters; scales, zero points and float buffers such as BatchNorm's running
    statistics are not counted). Pruning masks are applied (the pruned entries count as zeros)."""
    tensors: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("_orig") and prune.is_pruned(module):  # counted through its masked copy below
                continue
            tensors[id(p)] = p
        for b in module.buffers(recurse=False):
            if b.dtype in (torch.int8, torch.uint8):
                tensors[id(b)] = b
        # With masks on, the weight a layer computes with is a plain attribute (weight_orig × weight_mask).
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                masked = getattr(module, hook._tensor_name)
                tensors[id(masked)] = masked
    with torch.no_grad():
        return sum(int(torch.count_nonzero(t)) for t in tensors.values()) / 1e6


def save_deployable(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the file a user would ship (module docstring): a float model's state_dict, or an int8 model's
    exported program. A model still carrying pruning masks is refused: its state_dict would hold both
    weight_orig and weight_mask (twice the bytes); compression.make_permanent(model) first."""
    path = Path(path)
    if isinstance(model, Int8Model):
        model.save(path)
        return path
    if prune.is_pruned(model):  # any of its modules
        raise ValueError("the model still carries pruning masks (its state_dict holds weight_orig and weight_mask); "
                         "call hpsearch.deploy.compression.make_permanent(model) first")
    torch.save(model.state_dict(), path)
    return path


def size_mb(path: str | os.PathLike) -> float:
    """The file's size in MB (1e6 bytes)."""
    return os.path.getsize(path) / 1e6


def latency_ms(model: nn.Module, image_size: int, device: torch.device | str = "cpu", warmup: int | None = None,
               repeats: int | None = None, fmt: LatencyFormat = LatencyFormat()) -> float:
    """The median wall time, in milliseconds, of `repeats` forward passes of one random image after `warmup`
    untimed ones (defaults: CPU_PASSES or CUDA_PASSES), computed as `fmt` says. The model is moved to `device`
    (in place) and left in eval mode. On the CPU the default 18 passes take ~0.2 s for MobileNetV2 at 32 px
    on one core."""
    device = torch.device(device)
    default_warmup, default_repeats = CUDA_PASSES if device.type == "cuda" else CPU_PASSES
    warmup = default_warmup if warmup is None else warmup
    repeats = default_repeats if repeats is None else repeats
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if isinstance(model, Int8Model) and (device.type != "cpu" or fmt != LatencyFormat()):
        raise ValueError(f"an int8 model runs on the CPU in its own format only, not {device} ({fmt.describe()})")
    memory_format = torch.channels_last if fmt.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
    cuda = device.type == "cuda"
    x = torch.randn(1, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if fmt.bf16 else contextlib.nullcontext()
    model.eval()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(model: nn.Module, image_size: int, device: torch.device | str = "cpu",
            file_path: str | os.PathLike | None = None, fmt: LatencyFormat = LatencyFormat()) -> Costs:
    """All three costs, latency computed as `fmt` says; the deployable file is written to file_path (kept) or
    to a temporary file (removed)."""
    latency = latency_ms(model, image_size, device, fmt=fmt)
    how = {"latency_device": describe_device(device), "latency_precision": fmt.describe()}
    params = params_m(model)
    if file_path is not None:
        return Costs(latency, params, size_mb(save_deployable(model, file_path)), **how)
    with tempfile.TemporaryDirectory(prefix="hpsearch-costs-") as tmp:
        suffix = ".pt2" if isinstance(model, Int8Model) else ".pt"
        return Costs(latency, params, size_mb(save_deployable(model, Path(tmp) / f"model{suffix}")), **how)


@contextlib.contextmanager
def one_thread_on(device: torch.device | str) -> Iterator[None]:
    """On the CPU, run the block on one torch thread (and restore the count after): batch-1 latency on
    several threads measures whoever else spins on the cores as much as the model (two threads on a busy
    2-core box made MobileNetV3-Small 20x slower). Elsewhere, nothing changes."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
