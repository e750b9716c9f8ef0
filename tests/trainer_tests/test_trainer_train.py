"""hpsearch.engine.train: optimizers and schedules by name, the epoch loop, early stopping, best weights, CUDA graphs.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from itertools import pairwise

import pytest
import torch
from torch import nn

from hpsearch.core.hparams import OPTIMIZERS, SCHEDULERS, HParams
from hpsearch.engine import datasets, train
from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from hpsearch.engine.optim import build_optimizer, build_scheduler
from hpsearch.engine.train import (
    EpochStats,
    NonFiniteLoss,
    Trainer,
    TrainSettings,
    evaluate,
    graphs_disabled_reason,
    reset_graphs_state,
    seed_everything,
)

NORM = (IMAGENET_MEAN, IMAGENET_STD)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny_model(num_classes: int = 4, size: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, num_classes))


@pytest.fixture
def fake8():
    """96 random 8×8 images in 4 classes: enough for the loop's mechanics, nothing to learn."""
    return load_data(DataConfig("fake", samples=96, num_classes=4, image_size=8, val_fraction=0.25), "cpu", *NORM)


def one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(4, 3, 8, 8)).square().mean().backward()
    optimizer.step()


# --------------------------------------------------------------------------- optimizers and schedules


# The momentum each optimizer trains with when hp.momentum is 0.8: adam and adamw take betas instead.
MOMENTUM_TAKEN = {"sgd": 0.8, "adam": None, "adamw": None, "rmsprop": 0.8}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
    model = tiny_model()
    hp = HParams(optimizer=name, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4)
    optimizer = build_optimizer(model.parameters(), hp)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05
    assert group["weight_decay"] == 1e-4
    assert group.get("momentum") == MOMENTUM_TAKEN[name]
    before = [p.clone() for p in model.parameters()]
    one_step(model, optimizer)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))


def test_nesterov_needs_momentum():
    optimizer = build_optimizer(tiny_model().parameters(), HParams(nesterov=True, momentum=0.0))
    assert optimizer.param_groups[0]["nesterov"] is False


def run_schedule(hp: HParams, steps_per_epoch: int, metric=lambda epoch: 0.5) -> list[list[float]]:
    """lr of every optimizer step, epoch by epoch, driving the schedule as the Trainer does."""
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), hp)
    schedule = build_scheduler(optimizer, hp, steps_per_epoch)
    epochs = []
    for epoch in range(hp.epochs):
        lrs = []
        for _ in range(steps_per_epoch):
            lrs.append(schedule.lr())
            one_step(model, optimizer)
            schedule.step()
        schedule.epoch_end(metric(epoch))
        epochs.append(lrs)
    return epochs


# What each schedule does to lr=0.1 over 8 epochs of 4 steps (gamma 0.5). `epochs` holds the lr of every
# step, epoch by epoch, warm-up included; `main` is the schedule proper, after the warm-up epochs.


def _stays_at_lr(epochs, main):
    assert all(lr == pytest.approx(0.1) for e in main for lr in e)


def _cosine_anneals_to_near_zero(epochs, main):
    after = [lr for e in main for lr in e]
    assert after[0] == pytest.approx(0.1)
    assert after[-1] < 0.01
    assert all(a >= b for a, b in pairwise(after))


def _step_halves_every_two_epochs(epochs, main):  # step_size None → epochs // 3 = 2 epochs per decay
    assert [e[0] for e in main[:5]] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def _multistep_halves_at_epochs_4_and_6(epochs, main):  # milestones at epoch 4 and 6 of 8
    assert main[0][0] == pytest.approx(0.1)
    assert epochs[3][-1] == pytest.approx(0.1)
    assert epochs[4][0] == pytest.approx(0.05)
    assert epochs[6][0] == pytest.approx(0.025)


def _exponential_decays_smoothly_per_step(epochs, main):  # gamma per epoch, applied per step
    assert main[0][0] == pytest.approx(0.1)
    assert main[1][0] == pytest.approx(0.05)
    assert main[0][0] > main[0][1] > main[0][2] > 0.05


def _onecycle_peaks_at_lr_then_anneals(epochs, main):  # its own warm-up, whatever warmup_epochs says
    lrs = [lr for e in epochs for lr in e]
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    assert lrs[0] < 0.01
    assert lrs[-1] < 1e-3


def _plateau_cuts_after_three_stalled_epochs(epochs, main):  # the metric is constant: 2 tolerated
    assert main[0][0] == main[3][0] == pytest.approx(0.1)
    assert main[4][0] == pytest.approx(0.05)


SCHEDULE_SHAPES = {
    "none": _stays_at_lr,
    "cosine": _cosine_anneals_to_near_zero,
    "step": _step_halves_every_two_epochs,
    "multistep": _multistep_halves_at_epochs_4_and_6,
    "exponential": _exponential_decays_smoothly_per_step,
    "onecycle": _onecycle_peaks_at_lr_then_anneals,
    "plateau": _plateau_cuts_after_three_stalled_epochs,
}


@pytest.mark.parametrize("warmup", [0, 1], ids=["warmup0", "warmup1"])
@pytest.mark.parametrize(("name", "shape"), [pytest.param(name, SCHEDULE_SHAPES.get(name), id=name)
                                             for name in SCHEDULERS])
def test_every_scheduler_builds_and_steps(name, shape, warmup):
    assert shape is not None, f"scheduler {name!r} has no expected shape: add one to SCHEDULE_SHAPES"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "scheduler.step() before optimizer.step()"
        epochs = run_schedule(HParams(scheduler=name, lr=0.1, epochs=8, gamma=0.5, warmup_epochs=warmup), 4)
    lrs = [lr for epoch in epochs for lr in epoch]
    assert len(lrs) == 32
    assert all(math.isfinite(lr) and 0 <= lr <= 0.1 + 1e-12 for lr in lrs)
    shape(epochs, epochs[warmup:])


@pytest.mark.parametrize(("epochs", "warmup", "spe"), [
    (3, 3, 4),  # warm-up as long as the trial
    (3, 5, 4),  # longer
    (4, 1, 1),  # one warm-up step: a zero-length first phase
    (2, 1, 1),
    (2, 2, 1),  # two steps in all
    (1, 1, 1),  # one
])
def test_onecycle_warmup_of_the_whole_trial_still_trains_every_step(epochs, warmup, spe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epoch_lrs = run_schedule(HParams(scheduler="onecycle", lr=0.1, epochs=epochs, warmup_epochs=warmup), spe)
    lrs = [lr for epoch in epoch_lrs for lr in epoch]
    assert len(lrs) == epochs * spe
    assert all(math.isfinite(lr) and 0 < lr <= 0.1 + 1e-12 for lr in lrs)
    total = epochs * spe
    if total >= 3:  # room for a warm-up: lr rises to its peak, then anneals in the steps left
        peak = min(warmup * spe, total - 2)
        assert lrs[peak] == pytest.approx(0.1)
        assert lrs.index(max(lrs)) == peak
        assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1], strict=False))
        assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))


def test_onecycle_warmup_peaks_where_linear_warmup_ends():
    """warmup_epochs means the same for every schedule: lr reaches its peak on the first step after it."""
    onecycle = run_schedule(HParams(scheduler="onecycle", lr=0.1, epochs=4, warmup_epochs=1), steps_per_epoch=5)
    cosine = run_schedule(HParams(scheduler="cosine", lr=0.1, epochs=4, warmup_epochs=1), steps_per_epoch=5)
    for epochs in (onecycle, cosine):
        lrs = [lr for epoch in epochs for lr in epoch]
        assert lrs.index(max(lrs)) == 5
        assert max(lrs) == pytest.approx(0.1)


def test_onecycle_trial_whose_warmup_covers_it_trains_every_epoch(fake8):
    trainer = Trainer(tiny_model(), fake8, HParams(scheduler="onecycle", warmup_epochs=3, epochs=3, batch_size=16),
                      device="cpu")
    history = trainer.fit()
    assert [s.epoch for s in history] == [1, 2, 3]
    assert all(math.isfinite(s.train_loss) for s in history)


def test_warmup_is_linear_then_the_schedule():
    epochs = run_schedule(HParams(scheduler="cosine", lr=0.2, epochs=6, warmup_epochs=2), steps_per_epoch=5)
    lrs = [lr for epoch in epochs for lr in epoch]
    warm = lrs[:10]
    assert warm[0] == pytest.approx(0.2 * 0.01)
    steps = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert all(s == pytest.approx(steps[0]) for s in steps)  # a straight line...
    assert lrs[10] == pytest.approx(0.2)  # ...to lr, where the cosine starts
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_tensor_lr_is_updated_in_place():
    """What CUDA-graph replays rely on: the scheduler writes into the very tensor the captured step reads."""
    hp = HParams(optimizer="sgd", lr=0.1, scheduler="cosine", epochs=2)
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), hp, lr_tensor=True)
    lr = optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)
    assert optimizer.param_groups[0]["fused"]
    schedule = build_scheduler(optimizer, hp, steps_per_epoch=3)
    one_step(model, optimizer)
    schedule.step()
    assert optimizer.param_groups[0]["lr"] is lr
    assert lr.item() < 0.1


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_schedule_drives_a_tensor_lr_like_a_float_one(name):
    hp = HParams(optimizer="sgd", scheduler=name, lr=0.1, epochs=4, warmup_epochs=1 if name != "onecycle" else 0)
    lrs = {}
    for lr_tensor in (False, True):
        model = tiny_model()
        optimizer = build_optimizer(model.parameters(), hp, lr_tensor=lr_tensor)
        lr_object = optimizer.param_groups[0]["lr"]
        schedule = build_scheduler(optimizer, hp, steps_per_epoch=3)
        lrs[lr_tensor] = []
        for _ in range(hp.epochs):
            for _ in range(3):
                one_step(model, optimizer)
                schedule.step()
                lrs[lr_tensor].append(schedule.lr())
            schedule.epoch_end(0.5)
        if lr_tensor:
            assert optimizer.param_groups[0]["lr"] is lr_object  # never replaced, only written into
    assert lrs[True] == pytest.approx(lrs[False], rel=1e-5)


# --------------------------------------------------------------------------- the loop


def test_epoch_stats_are_what_mlflow_and_the_pruner_are_sent(fake8):
    """as_dict is logged to MLflow per epoch (the epoch is the step) and read for study.metric by the pruner."""
    stats = EpochStats(3, 0.5, 0.6, 0.7, 0.01, 2.0, 100.0)
    # The metric names users query in MLflow (README), each with its own value; the epoch is not a metric.
    assert stats.as_dict() == {"train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.7, "lr": 0.01,
                               "epoch_seconds": 2.0, "images_per_second": 100.0}
    # Every metric a study may optimise (study.metric) is there to report to Optuna.
    assert {"val_accuracy", "val_loss", "train_loss"} <= set(stats.as_dict())
    # A real fit's stats are plain finite floats: MLflow's log_metric and the worker→parent queue take no tensors.
    history = Trainer(tiny_model(), fake8, HParams(batch_size=16, epochs=2), device="cpu").fit()
    for s in history:
        assert all(type(v) is float and math.isfinite(v) for v in s.as_dict().values()), s.as_dict()


@pytest.mark.slow
def test_fit_on_digits_learns():
    seed_everything(0)
    task = load_data(DataConfig("digits", augment="none"), "cpu", *NORM)
    model = build_model("shufflenet_v2_x0_5", task.num_classes)
    hp = HParams(optimizer="adam", lr=0.01, batch_size=32, epochs=3)
    history = Trainer(model, task, hp, device="cpu").fit()
    assert len(history) == 3
    assert [s.epoch for s in history] == [1, 2, 3]
    assert history[-1].val_accuracy > 0.5  # chance is 0.1
    assert history[-1].train_loss < history[0].train_loss
    assert all(s.images_per_second > 0 and s.epoch_seconds > 0 and s.lr == 0.01 for s in history)
    # The held-out test split: never seen in training, also well above chance.
    assert evaluate(model, task.test, device="cpu")[1] > 0.5


def test_same_seeds_same_history(fake8):
    def run(seed):
        seed_everything(seed)
        trainer = Trainer(tiny_model(), fake8, HParams(lr=0.05, batch_size=16, epochs=2), device="cpu", seed=seed)
        return [(s.train_loss, s.val_loss) for s in trainer.fit()]

    first = run(3)
    assert run(3) == first  # a trial rerun with its seed retraces its curve exactly
    assert run(4) != first  # ...and the seed is what decides it: another seed trains another curve


def test_best_state_dict_is_the_best_epochs_weights(fake8):
    seed_everything(0)
    model = tiny_model()
    trainer = Trainer(model, fake8, HParams(lr=0.5, batch_size=8, epochs=6), device="cpu",
                      metric="val_loss", direction="minimize")
    snapshots = {}
    trainer.fit(lambda stats: snapshots.__setitem__(stats.epoch, {k: v.clone() for k, v in model.state_dict().items()}))
    losses = [s.val_loss for s in trainer.history]
    assert trainer.best_epoch == losses.index(min(losses)) + 1
    assert trainer.best_value == min(losses)
    best = snapshots[trainer.best_epoch]
    assert all(torch.equal(trainer.best_state_dict_cpu()[k], best[k]) for k in best)
    assert any(not torch.equal(v, best[k]) for k, v in model.state_dict().items())  # it moved on since


def test_on_epoch_may_raise_with_best_already_recorded(fake8):
    class Pruned(Exception):
        pass

    def prune_at_2(stats):
        if stats.epoch == 2:
            raise Pruned

    trainer = Trainer(tiny_model(), fake8, HParams(batch_size=16, epochs=5), device="cpu")
    with pytest.raises(Pruned):
        trainer.fit(prune_at_2)
    assert len(trainer.history) == 2
    assert trainer.best_epoch in (1, 2)
    assert trainer.best_state_dict is not None


def test_patience_stops_when_the_metric_stalls(fake8):
    # lr 0 on a model without BatchNorm: the validation metric never changes after epoch 1.
    trainer = Trainer(tiny_model(), fake8, HParams(lr=0.0, batch_size=16, epochs=10, patience=2), device="cpu")
    history = trainer.fit()
    assert len(history) == 3
    assert trainer.stopped_early
    assert trainer.best_epoch == 1


def test_no_patience_runs_every_epoch(fake8):
    trainer = Trainer(tiny_model(), fake8, HParams(lr=0.0, batch_size=16, epochs=4), device="cpu")
    assert len(trainer.fit()) == 4
    assert not trainer.stopped_early


def test_diverging_loss_raises_non_finite(fake8):
    # Two layers, so that a huge lr makes the weights grow multiplicatively until they overflow.
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4))
    trainer = Trainer(mlp, fake8, HParams(lr=1e10, momentum=0.9, batch_size=8, epochs=5), device="cpu")
    with pytest.raises(NonFiniteLoss, match=r"non-finite training loss \((nan|inf)\) at epoch \d+, step \d+"):
        trainer.fit()


def test_evaluate_covers_every_example(fake8):
    model = tiny_model()
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)  # uniform logits: loss log(4), and argmax says class 0
    loss, accuracy = evaluate(model, fake8.val, device="cpu", batch_size=7)  # 24 examples: 7+7+7+3
    labels = torch.cat([y for _, y in fake8.val.batches(100)])
    assert loss == pytest.approx(math.log(4))
    assert accuracy == pytest.approx((labels == 0).float().mean().item())


def test_small_train_split_still_trains(fake8):
    """A batch larger than the split: one step per epoch of the whole split, not zero steps."""
    trainer = Trainer(tiny_model(), fake8, HParams(batch_size=4096, epochs=1), device="cpu")
    assert trainer.steps_per_epoch == 1
    assert trainer.batch_size == len(fake8.train)
    assert math.isfinite(trainer.fit()[0].train_loss)


def test_two_trials_reuse_the_loaded_data(monkeypatch):
    calls = []
    real = datasets._READERS["fake"]
    monkeypatch.setitem(datasets._READERS, "fake", lambda cfg: calls.append(1) or real(cfg))
    cfg = DataConfig("fake", samples=64, num_classes=4, image_size=8)
    for trial in range(2):
        task = load_data(cfg, "cpu", *NORM)
        trainer = Trainer(tiny_model(), task, HParams(batch_size=16, epochs=1), device="cpu", seed=trial)
        trainer.fit()
        trainer.release()
        assert trainer.model is None
        assert trainer.best_state_dict is not None
    assert len(calls) == 1


def test_cpu_never_touches_cuda_graph_apis(fake8, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("CUDA graph API used on CPU")

    for name in ("CUDAGraph", "graph", "Stream", "stream", "current_stream", "set_stream", "device",
                 "graph_pool_handle", "synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    trainer = Trainer(tiny_model(), fake8, HParams(batch_size=16, epochs=2), device="cpu",
                      settings=TrainSettings(cuda_graphs="auto"))
    assert not trainer.use_graphs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit()
    trainer.release()


@pytest.mark.parametrize(("bad", "message"), [
    (dict(cuda_graphs="on"), "train.cuda_graphs must be one of auto, off, got 'on'"),
    (dict(amp="fp16"), "train.amp must be one of auto, off"),
])
def test_settings_refuse_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**bad)


def test_trainer_refuses_unknown_metric(fake8):
    with pytest.raises(ValueError, match="metric must be one of val_accuracy, val_loss, train_loss, got 'acc'"):
        Trainer(tiny_model(), fake8, HParams(), device="cpu", metric="acc")


# --------------------------------------------------------------------------- a failed capture, on the CPU


class FakeCuda:
    """Just enough of torch.cuda for the Trainer's graph path to run on CPU tensors.

    Its capture fails the way a real one does when the step syncs with the host: the op raises
    inside the capture, then capture_end raises in graph.__exit__, which so never restores the
    stream it made current. With capture_end_fails=False the capture ends (the graph is instantiated)
    and only the body's error propagates, as for an error raised by Python code in the step.
    """

    SYNC_ERROR = "CUDA error: operation not permitted when stream is capturing"
    END_ERROR = "CUDA error: operation failed due to a previous error during capture"

    def __init__(self, monkeypatch, capture_end_fails: bool = True):
        self.streams, self.graphs, self.captures, self.ended, self.released = [], [], [], [], []
        self.capturing = False
        self.cleanups = 0
        self.capture_end_fails = capture_end_fails
        fake = self

        class Stream:
            def __init__(self, device=None):
                self.device = device
                fake.streams.append(self)

            def wait_stream(self, other):
                pass

        self.default = Stream()
        self.current = self.default
        self.streams.clear()  # the streams the trainer makes

        class Graph:
            def __init__(self):
                self.was_reset = False
                fake.graphs.append(self)

            def reset(self):
                self.was_reset = True

            def replay(self):
                raise AssertionError("a failed capture must not be replayed")

        class Capture:
            def __init__(self, graph, pool=None, stream=None, capture_error_mode="global"):
                fake.captures.append(dict(graph=graph, pool=pool, stream=stream, mode=capture_error_mode))
                self.stream = stream

            def __enter__(self):
                self.previous, fake.current, fake.capturing = fake.current, self.stream, True

            def __exit__(self, kind, value, tb):
                fake.capturing = False
                if fake.capture_end_fails:
                    raise RuntimeError(FakeCuda.END_ERROR)  # before restoring the stream, as torch's does
                fake.current = self.previous

        @contextlib.contextmanager
        def stream(s):
            previous, fake.current = fake.current, s
            try:
                yield
            finally:
                fake.current = previous

        def end_allocate_to_pool(index, pool):
            if not fake.capture_end_fails:
                raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
            fake.ended.append((index, pool))

        def cleanup(*args):
            fake.cleanups += 1

        for name, value in dict(Stream=Stream, CUDAGraph=Graph, graph=Capture, stream=stream,
                                device=lambda device: contextlib.nullcontext(),
                                current_stream=lambda device=None: fake.current,
                                set_stream=lambda s: setattr(fake, "current", s),
                                graph_pool_handle=lambda: (0, 7), current_device=lambda: 0,
                                synchronize=cleanup, empty_cache=cleanup).items():
            monkeypatch.setattr(torch.cuda, name, value)
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", end_allocate_to_pool)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda index, pool: fake.released.append((index, pool)))


class SyncsWhileCapturing(nn.Module):
    """A step that syncs with the host, which a capture cannot take (on CUDA: an .item() in forward)."""

    def __init__(self, fake: FakeCuda):
        super().__init__()
        self.fake = fake
        self.fc = nn.Linear(3 * 8 * 8, 4)
        self.train_streams = []  # the stream each training forward ran on

    def forward(self, x):
        if self.fake.capturing:
            raise RuntimeError(FakeCuda.SYNC_ERROR)
        if self.training:
            self.train_streams.append(self.fake.current)
        return self.fc(x.flatten(1))


def graphed_on_fake_cuda(model, data, hp):
    """A CPU Trainer put on the graph path that CUDA would take."""
    trainer = Trainer(model, data, hp, device="cpu")
    trainer.use_graphs, trainer._side_stream = True, torch.cuda.Stream("cuda:1")
    return trainer


@pytest.mark.parametrize(("capture_end_fails", "reason", "pool_released_by_us"), [
    # the error inside the capture is what caused capture_end's; the pool was never handed back
    pytest.param(True, f"RuntimeError: {FakeCuda.SYNC_ERROR} (then RuntimeError: {FakeCuda.END_ERROR})",
                 [(0, (0, 7))], id="capture-end-fails-too"),
    # the capture ended: the pool is the graph's own, freed with it
    pytest.param(False, f"RuntimeError: {FakeCuda.SYNC_ERROR}", [], id="capture-ends"),
])
def test_failed_capture_restores_the_stream_and_trains_the_trial_eagerly(fake8, monkeypatch, capture_end_fails,
                                                                          reason, pool_released_by_us):
    fake = FakeCuda(monkeypatch, capture_end_fails)
    model = SyncsWhileCapturing(fake)
    trainer = graphed_on_fake_cuda(model, fake8, HParams(batch_size=16, epochs=2))  # 4 + a ragged 8 an epoch
    side = trainer._side_stream
    steps = []
    with pytest.warns(UserWarning, match="CUDA graph capture failed") as record:
        history = trainer.fit(lambda stats: steps.append(int(trainer._steps)))
    assert [str(w.message) for w in record] == [f"CUDA graph capture failed, training eagerly instead: {reason}"]
    assert graphs_disabled_reason() == reason
    assert fake.current is fake.default  # not the capture stream graph.__exit__ left behind
    # One side stream for the 3 warm-up steps and the capture, thread_local so other threads cannot break it.
    assert fake.streams == [side]
    assert len(fake.captures) == 1
    assert fake.captures[0]["stream"] is side
    assert fake.captures[0]["mode"] == "thread_local"
    assert model.train_streams == [side] * 3 + [fake.default] * 7
    # Every batch trained once (the one whose capture failed, eagerly), every epoch.
    assert steps == [5, 5]
    assert len(history) == 2
    assert all(math.isfinite(s.train_loss) for s in history)
    assert not trainer.use_graphs
    assert trainer._graph is None
    assert trainer._static is None
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    # The pool: released by us only when capture_end never got to hand it back (else the graph's own);
    # then the graph is reset and kept alive, since torch's host allocator may still read it.
    graph = fake.graphs[0]
    assert fake.ended == fake.released == pool_released_by_us
    assert graph.was_reset == (graph in train._failed_graphs) == bool(pool_released_by_us)
    assert fake.cleanups == 2  # synchronize, then empty_cache


class OutOfMemoryWhileCapturing(SyncsWhileCapturing):
    """A step whose capture runs out of device memory (the graph's pool cannot grow)."""

    def forward(self, x):
        if self.fake.capturing:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize("capture_end_fails", [True, False], ids=["capture-end-fails-too", "capture-ends"])
def test_out_of_memory_in_a_capture_is_raised_with_graphs_left_on(fake8, monkeypatch, capture_end_fails):
    """Not a capture failure: the trial's OOM handling (a retry) must see it, not an eager step into the same OOM."""
    fake = FakeCuda(monkeypatch, capture_end_fails)
    trainer = graphed_on_fake_cuda(OutOfMemoryWhileCapturing(fake), fake8, HParams(batch_size=16, epochs=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "CUDA graph capture failed, training eagerly instead"
        with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 2.00 GiB"):
            trainer.fit()
    assert graphs_disabled_reason() is None
    assert int(trainer._steps) == 3  # the warm-up steps, no eager one after
    # Cleaned up as any failed capture: stream restored, an unfinished pool released, memory handed back.
    assert fake.current is fake.default
    assert trainer._graph is None
    assert fake.released == ([(0, (0, 7))] if capture_end_fails else [])
    assert fake.cleanups == 2


def test_after_a_failed_capture_no_trainer_in_the_process_captures(fake8, monkeypatch):
    fake = FakeCuda(monkeypatch)
    first = graphed_on_fake_cuda(SyncsWhileCapturing(fake), fake8, HParams(batch_size=16, epochs=1))
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        first.fit()
    assert graphs_disabled_reason() is not None
    # A trainer already on the graph path goes eager at its next step: no warm-up, no capture.
    model = SyncsWhileCapturing(fake)
    second = graphed_on_fake_cuda(model, fake8, HParams(batch_size=16, epochs=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second.fit()
    assert not second.use_graphs
    assert model.train_streams == [fake.default] * 5
    assert len(fake.captures) == 1
    assert len(fake.graphs) == 1
    reset_graphs_state()
    assert graphs_disabled_reason() is None


def test_batch_in_the_models_memory_format_reaches_it_uncopied(fake8, monkeypatch):
    """channels_last (CUDA's format; forced here on the CPU): the augmented batch is channels_last as
    the crop gather makes it, and goes to the model as is, not to NCHW and back (two copies a step)."""
    monkeypatch.setattr(train, "_memory_format", lambda device, settings: torch.channels_last)
    made, seen = [], []
    real_batches = fake8.train.batches

    def batches(*args, **kwargs):
        for x, y in real_batches(*args, **kwargs):
            made.append(x.data_ptr())
            yield x, y

    monkeypatch.setattr(fake8.train, "batches", batches)
    model = tiny_model()
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].data_ptr()) if module.training else None)
    Trainer(model, fake8, HParams(batch_size=16, epochs=1), device="cpu").fit()
    assert len(made) == 5
    assert seen == made


def test_batch_in_another_memory_format_is_converted_once(fake8, monkeypatch):
    seen = []
    model = tiny_model()
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]) if module.training else None)
    Trainer(model, fake8, HParams(batch_size=16, epochs=1), device="cpu").fit()  # augmented: channels_last
    assert len(seen) == 5
    assert all(x.is_contiguous() for x in seen)


# --------------------------------------------------------------------------- no lost steps


def _count_training_batches(model: nn.Module) -> list[int]:
    """The size of every batch the model trains on (forward passes in train mode)."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]) if module.training else None)
    return sizes


@pytest.mark.parametrize(("batch_size", "expected"), [
    (16, [16, 16, 16, 16, 11]),  # the ragged last batch is trained, not dropped
    (25, [25, 25, 25]),          # divides the split: nothing ragged
    (37, [37, 38]),              # a last batch of one image joins the one before (BatchNorm needs two)
    (500, [75]),                 # a batch larger than the split: one batch of all of it
])
def test_every_training_image_is_seen_every_epoch(batch_size, expected):
    task = load_data(DataConfig("fake", samples=100, num_classes=4, image_size=8, val_fraction=0.25), "cpu", *NORM)
    assert len(task.train) == 75
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    sizes = _count_training_batches(model)
    steps = []
    trainer = Trainer(model, task, HParams(batch_size=batch_size, epochs=2), device="cpu")
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    trainer.fit()
    assert sizes == expected * 2
    assert len(steps) == 2 * len(expected)
    assert trainer.steps_per_epoch == len(expected)
    assert trainer.images_last_epoch == 75


# --------------------------------------------------------------------------- CUDA (run on a GPU machine)


@CUDA
@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "rmsprop"])
def test_graph_replays_see_scheduled_lr(optimizer):
    """After epoch 1 the step schedule cuts lr by 1e9: if replays read a stale lr, weights would still move."""
    seed_everything(0)
    task = load_data(DataConfig("fake", samples=512), "cuda", *NORM)
    model = build_model("mobilenet_v2", task.num_classes)
    hp = HParams(optimizer=optimizer, lr=0.01, batch_size=64, epochs=2, scheduler="step", step_size=1, gamma=1e-9)
    trainer = Trainer(model, task, hp, device="cuda")
    after_first = {}
    trainer.fit(lambda s: s.epoch == 1 and after_first.update({n: p.detach().clone()
                                                              for n, p in model.named_parameters()}))
    assert trainer._graph is not None
    moved = max((p.detach() - after_first[n]).abs().max().item() for n, p in model.named_parameters())
    assert moved < 1e-5


@CUDA
def test_the_ragged_last_batch_steps_eagerly_beside_the_graph():
    """75 images at batch 16: 4 graph replays and one eager step of 11 per epoch, the same weights."""
    seed_everything(0)
    task = load_data(DataConfig("fake", samples=100, num_classes=4, image_size=32, val_fraction=0.25), "cuda", *NORM)
    model = build_model("mobilenet_v2", task.num_classes)
    sizes = _count_training_batches(model)
    trainer = Trainer(model, task, HParams(optimizer="adamw", batch_size=16, epochs=3), device="cuda")
    history = trainer.fit()
    assert trainer._graph is not None
    assert trainer.images_last_epoch == 75
    assert sizes.count(11) == 3  # eager forwards (replays run no Python); capture and warm-up saw 16
    assert all(math.isfinite(s.train_loss) for s in history)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@CUDA
def test_graphs_match_eager_in_fp32():
    task = load_data(DataConfig("digits", augment="none"), "cuda", *NORM)
    histories = []
    for graphs in ("auto", "off"):
        seed_everything(0)
        model = build_model("shufflenet_v2_x0_5", 10)
        settings = TrainSettings(cuda_graphs=graphs, amp="off", channels_last="off")
        trainer = Trainer(model, task, HParams(optimizer="sgd", lr=0.05, batch_size=64, epochs=2,
                                               scheduler="cosine"), device="cuda", settings=settings)
        histories.append(trainer.fit())
        assert (trainer._graph is not None) == (graphs == "auto")
    for graphed, eager in zip(*histories, strict=False):
        assert graphed.train_loss == pytest.approx(eager.train_loss, rel=0.05)
        assert graphed.val_accuracy == pytest.approx(eager.val_accuracy, abs=0.1)


@CUDA
def test_cuda_default_path_learns_and_releases():
    task = load_data(DataConfig("digits", augment="none"), "cuda", *NORM)
    seed_everything(0)
    trainer = Trainer(build_model("resnet18", 10), task, HParams(optimizer="adamw", lr=3e-3, batch_size=128,
                                                                 epochs=8, scheduler="onecycle"), device="cuda")
    assert trainer.fit()[-1].val_accuracy > 0.5  # chance: 0.1
    assert trainer._graph is not None
    trainer.release()
    assert all(v.device.type == "cpu" for v in trainer.best_state_dict.values())


@CUDA
def test_failed_capture_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("capture unsupported")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", broken)
    task = load_data(DataConfig("fake", samples=256), "cuda", *NORM)
    trainer = Trainer(build_model("mobilenet_v2", 10), task, HParams(batch_size=32, epochs=2), device="cuda")
    with pytest.warns(UserWarning, match="CUDA graph capture failed") as record:
        history = trainer.fit()
    assert len(record) == 1
    assert len(history) == 2
    assert not trainer.use_graphs
    assert graphs_disabled_reason() == "RuntimeError: capture unsupported"


class ItemInForward(nn.Module):
    """A host sync in forward: harmless eagerly, fatal to a graph capture (a real, not a mocked, failure)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if out.detach().float().abs().sum().item() < 0:  # never true: the .item() is the point
            out = -out
        return out


@CUDA
def test_capture_broken_by_a_host_sync_leaves_a_healthy_process():
    task = load_data(DataConfig("fake", samples=256), "cuda", *NORM)
    seed_everything(0)
    trainer = Trainer(ItemInForward(), task, HParams(batch_size=32, epochs=2), device="cuda")
    with pytest.warns(UserWarning, match="CUDA graph capture failed") as record:
        history = trainer.fit()
    assert len(record) == 1
    assert len(history) == 2
    assert all(math.isfinite(s.train_loss) for s in history)
    assert not trainer.use_graphs
    assert trainer._graph is None
    assert graphs_disabled_reason() is not None
    assert "capturing" in graphs_disabled_reason()
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # not the capture stream
    assert not torch.cuda.is_current_stream_capturing()
    trainer.release()

    # The next trial in this process trains eagerly from its start, and learns as it should.
    digits = load_data(DataConfig("digits", augment="none"), "cuda", *NORM)
    seed_everything(0)
    hp = HParams(optimizer="adamw", lr=3e-3, batch_size=128, epochs=8, scheduler="onecycle")
    following = Trainer(build_model("resnet18", 10), digits, hp, device="cuda")
    assert not following.use_graphs
    assert not isinstance(following.optimizer.param_groups[0]["lr"], torch.Tensor)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="CUDA graph capture failed")
        history = following.fit()
    assert history[-1].val_accuracy > 0.5  # chance: 0.1
    assert following._graph is None
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_graph_on_a_second_gpu_is_captured_there():
    """cuda:1 while cuda:0 is current: warm-up, capture and replay all on cuda:1's streams."""
    torch.cuda.set_device(0)
    task = load_data(DataConfig("fake", samples=256), "cuda:1", *NORM)
    trainer = Trainer(build_model("mobilenet_v2", 10), task, HParams(batch_size=32, epochs=2), device="cuda:1")
    history = trainer.fit()
    assert trainer._graph is not None
    assert graphs_disabled_reason() is None
    assert trainer._side_stream.device == torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
    assert all(math.isfinite(s.train_loss) for s in history)
