"""One trial's training: optimizer and schedule from names, the epoch loop, evaluation, CUDA graphs.

On CUDA the whole train step (forward, backward, optimizer step) is captured once in a CUDA graph
and replayed: MobileNetV2-sized models are bound by kernel launches, and a replay launches them all
at once (6-9x faster; docs/design.md). What a graph needs shapes the code: fixed batch shapes (the
ragged last batch of an epoch takes an eager step beside the graph), inputs copied into static
buffers, the learning rate as a device tensor the scheduler updates in place, and the running loss
summed on the device so that nothing syncs with the host until the epoch ends. A capture that
fails falls back to eager steps and turns graphs off for the rest of the process
(graphs_disabled_reason); one that ran out of memory raises the OOM, as an eager step would. Gradual
unfreezing (hp.unfreeze_epoch) changes what the step trains, so the graph is dropped then and captured
again. On the CPU everything runs eagerly in fp32. With a teacher (knowledge distillation, teacher.py) the
step's loss takes the teacher's predictions on the same batch: its forward runs inside the step, so inside
the captured graph, under no_grad.

Torch-only on purpose (runs on GPU boxes that lack the rest of hpsearch's dependencies).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.core.hparams import DIRECTIONS, EPOCH_METRICS, METRICS, HParams, TrainSettings
from hpsearch.engine.data import batch_bounds
from hpsearch.engine.finetune import group_lrs, param_groups
from hpsearch.engine.models import freeze_stages, set_train_mode
from hpsearch.engine.optim import _complete_momentum_buffers, build_optimizer, build_scheduler
from hpsearch.engine.teacher import distillation_loss, prepare_teacher

GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (lazy optimizer state, cuDNN autotuning)


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float  # fraction 0..1
    lr: float  # lr of the epoch's first step (first param group)
    epoch_seconds: float  # training + evaluation wall time
    images_per_second: float  # training images / training seconds

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in EPOCH_METRICS}


class NonFiniteLoss(RuntimeError):
    """The training loss became nan or inf: the trial diverged."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every device's default generator, CUDA included


# --------------------------------------------------------------------------- evaluation


def _bf16(device: torch.device, settings: TrainSettings) -> bool:
    """Whether steps and evaluation run under bf16 autocast (and a teacher holds bf16 weights)."""
    return device.type == "cuda" and settings.amp == "auto"


def _autocast(device: torch.device, settings: TrainSettings, *,
              for_graph: bool = False) -> contextlib.AbstractContextManager[Any]:
    if _bf16(device, settings):
        # Autocast's weight-cast cache must be off inside graph capture (cached casts would be stale).
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not for_graph)
    return contextlib.nullcontext()


def _memory_format(device: torch.device, settings: TrainSettings) -> torch.memory_format:
    if device.type == "cuda" and settings.channels_last == "auto":
        return torch.channels_last
    return torch.contiguous_format


def training_format(device: torch.device | str, settings: TrainSettings) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last): how a model trained on `device` computes (for costs.LatencyFormat)."""
    device = torch.device(device)
    return _bf16(device, settings), _memory_format(device, settings) == torch.channels_last


def evaluate(model: nn.Module, split: Any, *, device: torch.device | str, settings: TrainSettings = TrainSettings(),
             batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the whole split, unaugmented. Leaves the model in eval mode.

    An empty split (no test set held out) gives (nan, nan).
    """
    if len(split) == 0:
        return math.nan, math.nan
    device = torch.device(device)
    fmt = _memory_format(device, settings)
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.inference_mode(), _autocast(device, settings):
        for x, y in split.batches(batch_size, shuffle=False, augment=False, drop_last=False):
            logits = model(x.contiguous(memory_format=fmt)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = len(split)
    return loss_sum.item() / n, correct.item() / n


# --------------------------------------------------------------------------- CUDA graphs, process-wide

# Once a capture fails, graphs stay off for the rest of the process: a failed capture can leave CUDA
# and the allocator in states torch cannot fully undo, so the worker retires after the trial.
_graphs_off_reason: str | None = None
# Captures that failed inside capture_end: torch's host allocator may still hold a filter pointing
# into the graph object, so the object is kept alive rather than freed.
_failed_graphs: list = []


@contextlib.contextmanager
def _capturable_stepped_eagerly() -> Iterator[None]:
    """torch warns when a capturable optimizer steps outside a graph: expected in warm-up and ragged steps."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
        yield


def graphs_disabled_reason() -> str | None:
    """Why CUDA graphs are off in this process (a capture failed in it), or None while they are healthy."""
    return _graphs_off_reason


def reset_graphs_state() -> None:
    """Let this process capture again (for tests)."""
    global _graphs_off_reason
    _graphs_off_reason = None


def _disable_graphs(reason: str) -> None:
    global _graphs_off_reason
    if _graphs_off_reason is None:
        _graphs_off_reason = reason


def _describe(error: BaseException) -> str:
    """One line: the error, and the one inside the capture that made capture_end fail, if any."""
    def line(e: BaseException) -> str:
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__

    cause = error.__cause__ or error.__context__
    return line(error) if cause is None else f"{line(cause)} (then {line(error)})"


def _out_of_memory(error: BaseException) -> torch.OutOfMemoryError | None:
    """The out-of-memory error behind a failed capture (raised inside it, or the one capture_end then
    tripped over), or None."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, torch.OutOfMemoryError):
            return e
    return None


def _release_unfinished_pool(pool: Any) -> bool:
    """End the allocator's routing into a failed capture's pool and release the pool, when capture_end
    raised before doing so (True); False when the capture never began or capture_end got that far."""
    if pool is None:
        return False
    index = torch.cuda.current_device()
    try:
        torch._C._cuda_endAllocateToPool(index, pool)
    except (RuntimeError, AttributeError, TypeError):  # not routing into it (or a torch without these calls)
        return False
    torch._C._cuda_releasePool(index, pool)
    return True


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Trains one model on one TaskData with one set of hyperparameters, epoch by epoch.

    `seed` decides the data order and augmentation; call seed_everything(seed) before build_model
    too, for the same head initialisation and dropout masks. A `teacher` (teacher.Teacher) makes the loss
    hp.distill_alpha's mix of the labels' and the teacher's (teacher.distillation_loss); it is moved to the
    device in inference precision and never trained.
    """

    def __init__(self, model: nn.Module, data: Any, hp: HParams, *, device: torch.device | str,
                 settings: TrainSettings = TrainSettings(), metric: str = "val_accuracy",
                 direction: str = "maximize", seed: int = 0, teacher: nn.Module | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        self.device = torch.device(device)
        self.data, self.hp, self.settings = data, hp, settings
        self.metric, self.direction = metric, direction
        cuda = self.device.type == "cuda"
        # No capture once one failed in this process (see graphs_disabled_reason).
        self.use_graphs = cuda and settings.cuda_graphs == "auto" and _graphs_off_reason is None
        self.memory_format = _memory_format(self.device, settings)
        if cuda:
            torch.backends.cudnn.benchmark = True  # shapes are static; pick the fastest kernels once
        self.model = model.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        # Gradual unfreezing: what is frozen now trains from hp.unfreeze_epoch on, so its parameters get
        # their groups (and the schedule's position) from the start; until then they have no grads to step.
        frozen = any(not p.requires_grad for p in model.parameters())
        self.unfreeze_epoch = hp.unfreeze_epoch if frozen else None
        groups = param_groups(model, hp, include_frozen=self.unfreeze_epoch is not None)
        self.group_lrs = group_lrs(groups)  # {"lr.head": …, "lr.backbone": …}: what the run records
        self.optimizer = build_optimizer(groups, hp, lr_tensor=self.use_graphs)
        self.batch_size = min(hp.batch_size, len(data.train))
        # Every image every epoch: the ragged last batch is a step too (see batch_bounds).
        self.steps_per_epoch = len(batch_bounds(len(data.train), self.batch_size))
        self.schedule = build_scheduler(self.optimizer, hp, self.steps_per_epoch, direction)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
        self.teacher = teacher
        if teacher is not None:  # in place, once per worker: a cached teacher is already there
            dtype = torch.bfloat16 if _bf16(self.device, settings) else torch.float32
            prepare_teacher(teacher, self.device, dtype, self.memory_format)
        # The one check: without a teacher a step computes exactly the loss it always did.
        self.loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            self._plain_loss if teacher is None else self._distilled_loss)
        # Data order and augmentation come from a generator on the device: no host round trips.
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.eval_batch_size = max(512, self.batch_size)
        # Device-side running totals of the epoch; read once at its end.
        self._loss_sum = torch.zeros((), device=self.device)
        self._steps = torch.zeros((), dtype=torch.long, device=self.device)
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, y) buffers the graph reads
        self._eager_steps = 0
        self.images_last_epoch = 0
        # One side stream on our device for the warm-up steps and the capture (torch.cuda.graph would
        # otherwise make its own on whichever device is current).
        self._side_stream: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if self.use_graphs else None

        self.history: list[EpochStats] = []
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.best_state_dict: dict | None = None  # on the model's device; see best_state_dict_cpu()
        self._best_cpu: dict | None = None
        self.stopped_early = False

    # ---- one step

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on a batch, then the schedule's step.

        Eager, or on CUDA: GRAPH_WARMUP_STEPS eager steps, then one capture, then graph replays.
        The loss goes into the epoch's device-side totals; nothing waits for the device here.
        """
        if self.use_graphs and x.shape[0] == self.batch_size:
            self._graph_step(x, y)
        elif self._graph is not None:
            self._ragged_step(x, y)
        else:
            self._eager_step(x, y)
        self.schedule.step()

    def _plain_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.model(x), y)

    def _distilled_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None  # chosen only with one
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(self.model(x), teacher_logits, y, self.criterion, self.hp.distill_alpha,
                                 self.hp.distill_temperature)

    def _forward_backward_step(self, x: torch.Tensor, y: torch.Tensor, *, for_graph: bool = False) -> None:
        with _autocast(self.device, self.settings, for_graph=for_graph):
            loss = self.loss(x, y)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach().float()
        self._steps += 1
        # Remember the first step whose loss is not finite, without a host sync.
        self._first_bad.copy_(torch.where(~torch.isfinite(loss) & (self._first_bad < 0), self._steps, self._first_bad))
        self._loss_sum += loss

    def _eager_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        # A no-op when the batch already comes in the model's memory format (the pipeline keeps the
        # layout its ops produce): the one conversion a step makes, if any.
        self._forward_backward_step(x.contiguous(memory_format=self.memory_format), y)

    def _ragged_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """An eager step beside a captured graph, for a batch of another shape (an epoch's last).

        The gradients stay the graph's own tensors, zeroed in place: the step reads and writes the
        same parameters, optimizer state and learning-rate tensor the graph does.
        """
        self.optimizer.zero_grad(set_to_none=False)
        with _capturable_stepped_eagerly():
            self._forward_backward_step(x.contiguous(memory_format=self.memory_format), y)

    def _graph_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._graph is None:
            # Warm-up and capture on our device, whichever is current: torch.cuda.graph() synchronizes
            # and captures there. Replays need no device switch (CUDAGraph.replay guards its own).
            with torch.cuda.device(self.device):
                if _graphs_off_reason is not None:  # another capture failed meanwhile
                    self.use_graphs = False
                    self._eager_step(x, y)
                    return
                if self._eager_steps < GRAPH_WARMUP_STEPS:
                    self._warmup_step(x, y)
                    return
                failure = self._capture(x, y)
                if failure is not None:  # unsupported op, optimizer or driver: train on, eagerly
                    warnings.warn(f"CUDA graph capture failed, training eagerly instead: {failure}", stacklevel=3)
                    _disable_graphs(failure)
                    self.use_graphs = False
                    self._eager_step(x, y)
                    return
        assert self._graph is not None
        assert self._static is not None
        static_x, static_y = self._static
        static_x.copy_(x)  # into the model's memory format, if x is not in it yet
        static_y.copy_(y)
        self._graph.replay()

    def _warmup_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """A real training step, run eagerly on the side stream as graph capture requires."""
        side = self._side_stream
        assert side is not None  # made with the trainer when it uses graphs
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), _capturable_stepped_eagerly():
            self._eager_step(x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._eager_steps += 1

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> str | None:
        """Capture one train step into self._graph: None, or why it failed (after cleaning up)."""
        static_x = torch.empty_like(x, memory_format=self.memory_format)
        static_y = torch.empty_like(y)
        # Grads set to None now are allocated inside the graph, from its private pool, and each
        # replay writes them afresh instead of accumulating.
        self.optimizer.zero_grad(set_to_none=True)
        previous = torch.cuda.current_stream(self.device)
        graph: torch.cuda.CUDAGraph | None = None
        pool = None
        failure: str | None = None
        oom: torch.OutOfMemoryError | None = None
        try:
            try:
                graph = torch.cuda.CUDAGraph()
                pool = torch.cuda.graph_pool_handle()  # ours, so a failed capture's pool can be released
                # thread_local: another thread's unsafe call (a DataLoader pinning memory) cannot break it.
                with torch.cuda.graph(graph, pool=pool, stream=self._side_stream, capture_error_mode="thread_local"):
                    self._forward_backward_step(static_x, static_y, for_graph=True)
            finally:
                # When capture_end raises, graph.__exit__ never restores the stream: the capture stream stays current.
                torch.cuda.set_stream(previous)
        except Exception as e:
            failure = _describe(e)
            oom = _out_of_memory(e)
            if oom is not None:  # its traceback's frames hold the capture's tensors: let them go with the rest
                oom.__traceback__ = None
        if failure is None:
            self._graph, self._static = graph, (static_x, static_y)
            return None
        # Out of the except block, the exception's frames (and the capture's tensors they held) are gone.
        del static_x, static_y
        if _release_unfinished_pool(pool) and graph is not None:
            with contextlib.suppress(Exception):
                graph.reset()  # drops its capture id and generator states
            _failed_graphs.append(graph)  # torch's host allocator may still call a filter that reads it
        del graph  # otherwise freeing it releases its pool
        self.optimizer.zero_grad(set_to_none=True)  # grads made during the capture live in its pool
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        if oom is not None:  # not the capture's fault: the trial's OOM handling (a retry) decides, graphs stay on
            raise oom
        return failure

    # ---- one epoch

    def _unfreeze(self) -> None:
        """Everything trains from now on; a captured step covered only what had grads then, so it goes, and
        the next full batches warm up (creating the new parameters' optimizer state) and capture again."""
        freeze_stages(self.model, 0)
        self.unfreeze_epoch = None
        _complete_momentum_buffers(self.optimizer)
        if self._graph is not None:
            torch.cuda.synchronize(self.device)  # no replay in flight when the graph and its pool go
        self._graph = self._static = None
        self._eager_steps = 0
        self.optimizer.zero_grad(set_to_none=True)  # the old graph's grads lived in its pool

    def _train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """(mean training loss, lr at the epoch's start, training seconds)."""
        if self.unfreeze_epoch is not None and epoch >= self.unfreeze_epoch:
            self._unfreeze()
        set_train_mode(self.model)
        self._loss_sum.zero_()
        self._steps.zero_()
        self._first_bad.fill_(-1)
        lr = self.schedule.lr()
        start = time.perf_counter()
        images = 0
        for x, y in self.data.train.batches(self.batch_size, shuffle=True, augment=True, generator=self.generator):
            self.train_step(x, y)
            images += x.shape[0]
        self.images_last_epoch = images
        loss_sum, steps, first_bad = torch.stack([self._loss_sum.double(), self._steps.double(),
                                                  self._first_bad.double()]).tolist()  # the epoch's one sync
        seconds = time.perf_counter() - start
        if first_bad >= 0 or not math.isfinite(loss_sum):
            bad_step = int(first_bad) if first_bad >= 0 else int(steps)
            raise NonFiniteLoss(f"non-finite training loss ({loss_sum}) at epoch {epoch}, step {bad_step}")
        return loss_sum / steps, lr, seconds

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.direction == "maximize" else value < self.best_value

    def fit(self, on_epoch: Callable[[EpochStats], None] | None = None, *,
            until_epoch: int | None = None) -> list[EpochStats]:
        """Train hp.epochs epochs (fewer when patience stops it); evaluate on data.val after each.

        After each epoch: record it, update best_*, step plateau, then call on_epoch(stats). on_epoch
        may raise (e.g. optuna.TrialPruned) and the exception propagates with best_* up to date.
        It goes on from the epochs already in history (a trainer resumed by engine/pause.py), and
        `until_epoch` pauses it after that epoch: fit again to go on.
        """
        hp = self.hp
        last = hp.epochs if until_epoch is None else min(hp.epochs, until_epoch)
        for epoch in range(len(self.history) + 1, last + 1):
            start = time.perf_counter()
            train_loss, lr, train_seconds = self._train_epoch(epoch)
            val_loss, val_accuracy = evaluate(self.model, self.data.val, device=self.device,
                                              settings=self.settings, batch_size=self.eval_batch_size)
            stats = EpochStats(epoch, train_loss, val_loss, val_accuracy, lr, time.perf_counter() - start,
                               self.images_last_epoch / train_seconds)
            self.history.append(stats)
            value = getattr(stats, self.metric)
            if self._improved(value):
                self.best_epoch, self.best_value = epoch, value
                # A device-side copy: no host sync now; best_state_dict_cpu() moves it when needed.
                self.best_state_dict = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self._best_cpu = None
            self.schedule.epoch_end(value)
            if on_epoch is not None:
                on_epoch(stats)
            if hp.patience is not None and epoch - (self.best_epoch or 0) >= hp.patience:
                self.stopped_early = True
                break
        return self.history

    def best_state_dict_cpu(self) -> dict | None:
        """The best epoch's weights in host memory (copied once, on first request)."""
        if self._best_cpu is None and self.best_state_dict is not None:
            self._best_cpu = {k: v.to("cpu") for k, v in self.best_state_dict.items()}
        return self._best_cpu

    def release(self) -> None:
        """Drop the model, optimizer and graph so their device memory can go to the next trial.

        The best weights are kept, moved to host memory (best_state_dict then refers to that copy).
        """
        self.best_state_dict = self.best_state_dict_cpu()
        # A released trainer is never trained again: its parts may go.
        self.model = self.optimizer = self.schedule = self.criterion = self.teacher = None  # type: ignore[assignment]
        self._graph = self._static = self._side_stream = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
