"""Device slots: which trials run at once, on which GPU or how many CPU threads, with what memory share.

A slot is one worker process's place: one GPU (CUDA_VISIBLE_DEVICES names it) or a share of the CPU
cores. `plan_slots` turns `resources.devices` and `resources.trials_per_device` into the slots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hpsearch.core.errors import UsageError


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: int | None  # None: a CPU slot; else the GPU's index among those this process sees
    threads: int | None = None  # CPU threads for a CPU slot
    memory_fraction: float | None = None  # share of its GPU's memory, when slots share a GPU

    @property
    def label(self) -> str:
        return f"cuda:{self.gpu}" if self.gpu is not None else "cpu"

    def env(self, parent_visible: str | None = None) -> dict[str, str]:
        """The worker's environment: its one GPU (named as the parent's mask names it), its threads.

        `parent_visible` is the parent's CUDA_VISIBLE_DEVICES (read from the environment when None).
        """
        if parent_visible is None:
            parent_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        # A CPU slot hides every GPU so that nothing in it can touch one by accident.
        env = {"CUDA_VISIBLE_DEVICES": "" if self.gpu is None else physical_gpu(self.gpu, parent_visible)}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env


def physical_gpu(index: int, parent_visible: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES entry for the parent's GPU `index`.

    Indices count inside the parent's own mask: under CUDA_VISIBLE_DEVICES=2,3 (SLURM, shared boxes)
    GPU 0 is physical GPU 2. Entries are passed on verbatim, so UUIDs (GPU-…) and MIG instances
    (MIG-…) keep working; without a mask the index is the physical one.
    """
    if parent_visible is None or not parent_visible.strip():
        return str(index)
    entries = [e.strip() for e in parent_visible.split(",") if e.strip()]
    if index >= len(entries):
        raise ValueError(f"GPU {index} is not among CUDA_VISIBLE_DEVICES={parent_visible}")
    return entries[index]


GPU_MEMORY_SHARE = 0.95  # of a GPU's memory, split between the trials packed on it


def usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's share, not the whole machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def visible_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()  # NVML-based: does not create a CUDA context here
    except Exception:
        return 0


def auto_cpu_slots(cores: int) -> int:
    """How many trials `trials_per_device: auto` runs at once on `cores` CPU cores.

    One single-threaded trial per core, measured faster than one trial using every core
    (benchmarks/parallel.py --only cpu-slots; docs/benchmarks.md): the small convolutions of a
    fine-tuning trial parallelise poorly over threads, while separate trials never wait on each
    other. Capped, since every worker holds its own copy of the dataset and model.
    """
    return max(1, min(cores, AUTO_CPU_SLOTS_MAX))


AUTO_CPU_SLOTS_MAX = 8


def plan_slots(devices: str | tuple[int, ...], trials_per_device: int | str, gpu_count: int | None = None,
               cpu_count: int | None = None, trials_left: int | None = None) -> list[Slot]:
    """devices: "auto" | "cpu" | a tuple of GPU indices → one Slot per (device, k < trials_per_device).

    trials_per_device "auto" is 1 per GPU, and auto_cpu_slots() on the CPU. With `trials_left`, no more slots
    than that: each device gets at most its share of the trials (memory and cores split accordingly), and the
    last device fewer when they do not divide evenly.
    """
    if devices == "auto":
        n = visible_gpu_count() if gpu_count is None else gpu_count
        gpus: list[int | None] = list(range(n)) if n else [None]
    elif isinstance(devices, str):  # "cpu"
        gpus = [None]
    else:
        n = visible_gpu_count() if gpu_count is None else gpu_count
        missing = [g for g in devices if g >= n]
        if missing:
            raise UsageError(f"--devices: GPU {missing[0]} does not exist (this machine sees {n} GPU(s))")
        gpus = list(devices)
    cores = cpu_count or usable_cores()
    if isinstance(trials_per_device, int):
        per_device = trials_per_device
    else:  # "auto"
        per_device = auto_cpu_slots(cores) if None in gpus else 1
    if trials_left is not None:
        per_device = min(per_device, -(-max(trials_left, 0) // len(gpus)))  # ceil: GPU 0 may get one more
    n_cpu_slots = per_device if None in gpus else 0
    threads = max(1, cores // n_cpu_slots) if n_cpu_slots else None
    # An explicit OMP_NUM_THREADS caps it: several runs sharing a machine must not oversubscribe
    # the cores (OpenMP threads spinning at a barrier for a descheduled peer cost up to 6x here).
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if threads and cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    # Trials packed on one GPU each get an equal share of its memory (less a margin for the CUDA
    # context and cuDNN workspaces, which the cap does not cover), so one greedy trial cannot starve
    # its neighbours into out-of-memory errors.
    fraction = GPU_MEMORY_SHARE / per_device if per_device > 1 else None
    slots: list[Slot] = []
    for gpu in gpus:
        for _ in range(per_device):
            slots.append(Slot(len(slots), gpu, threads if gpu is None else None,
                              fraction if gpu is not None else None))
    return slots if trials_left is None else slots[:max(trials_left, 0)]
