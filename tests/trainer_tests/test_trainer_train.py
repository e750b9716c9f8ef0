"""hpsearch.train: optimizers and schedules by name, the epoch loop, early stopping, best weights, CUDA graphs."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from hpsearch import data as data_module
from hpsearch.data import DataConfig, load_data
from hpsearch.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from hpsearch.params import EPOCH_METRICS, OPTIMIZERS, SCHEDULERS, HParams
from hpsearch.train import (EpochStats, NonFiniteLoss, Trainer, TrainSettings, build_optimizer, build_scheduler,
                            evaluate, seed_everything)

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


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
    model = tiny_model()
    hp = HParams(optimizer=name, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4)
    optimizer = build_optimizer(model.parameters(), hp)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-4
    if name in ("sgd", "rmsprop"):
        assert group["momentum"] == 0.8
    before = [p.clone() for p in model.parameters()]
    one_step(model, optimizer)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


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


@pytest.mark.parametrize("warmup", [0, 1])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_and_steps(name, warmup):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "scheduler.step() before optimizer.step()"
        epochs = run_schedule(HParams(scheduler=name, lr=0.1, epochs=8, gamma=0.5, warmup_epochs=warmup), 4)
    lrs = [lr for epoch in epochs for lr in epoch]
    assert len(lrs) == 32 and all(math.isfinite(lr) and 0 <= lr <= 0.1 + 1e-12 for lr in lrs)
    main = epochs[warmup:]  # the schedule proper, after warm-up
    first = main[0][0]
    expected_first = {"onecycle": None}.get(name, 0.1)
    if expected_first is not None:
        assert first == pytest.approx(expected_first)
    if name == "none":
        assert all(lr == pytest.approx(0.1) for e in main for lr in e)
    if name == "cosine":
        assert main[-1][-1] < 0.01 and all(a >= b for a, b in zip(lrs[warmup * 4:], lrs[warmup * 4 + 1:]))
    if name == "step":  # step_size None → epochs // 3 = 2 epochs per decay
        assert [e[0] for e in main[:5]] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    if name == "multistep":  # milestones at epoch 4 and 6 of 8
        assert epochs[3][-1] == pytest.approx(0.1) and epochs[4][0] == pytest.approx(0.05)
        assert epochs[6][0] == pytest.approx(0.025)
    if name == "exponential":  # gamma per epoch, applied smoothly per step
        assert main[1][0] == pytest.approx(0.05) and main[0][0] > main[0][1] > main[0][2] > 0.05
    if name == "onecycle":  # peaks at lr (its own warm-up), then anneals towards 0
        assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[0] < 0.01 and lrs[-1] < 1e-3
    if name == "plateau":  # constant metric: 2 stalled epochs tolerated, cut by gamma after the third
        assert main[0][0] == main[3][0] == pytest.approx(0.1) and main[4][0] == pytest.approx(0.05)


def test_warmup_is_linear_then_the_schedule():
    epochs = run_schedule(HParams(scheduler="cosine", lr=0.2, epochs=6, warmup_epochs=2), steps_per_epoch=5)
    lrs = [lr for epoch in epochs for lr in epoch]
    warm = lrs[:10]
    assert warm[0] == pytest.approx(0.2 * 0.01)
    steps = [b - a for a, b in zip(warm, warm[1:])]
    assert all(s == pytest.approx(steps[0]) for s in steps)  # a straight line...
    assert lrs[10] == pytest.approx(0.2)  # ...to lr, where the cosine starts
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))


def test_tensor_lr_is_updated_in_place():
    """What CUDA-graph replays rely on: the scheduler writes into the very tensor the captured step reads."""
    hp = HParams(optimizer="sgd", lr=0.1, scheduler="cosine", epochs=2)
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), hp, lr_tensor=True)
    lr = optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and optimizer.param_groups[0]["fused"]
    schedule = build_scheduler(optimizer, hp, steps_per_epoch=3)
    one_step(model, optimizer)
    schedule.step()
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() < 0.1


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


def test_epoch_stats_as_dict_keys():
    stats = EpochStats(1, 0.5, 0.6, 0.7, 0.01, 2.0, 100.0)
    assert tuple(stats.as_dict()) == EPOCH_METRICS and stats.as_dict()["val_accuracy"] == 0.7


def test_fit_on_digits_learns():
    seed_everything(0)
    task = load_data(DataConfig("digits", augment="none"), "cpu", *NORM)
    model = build_model("shufflenet_v2_x0_5", task.num_classes)
    hp = HParams(optimizer="adam", lr=0.01, batch_size=32, epochs=3)
    history = Trainer(model, task, hp, device="cpu").fit()
    assert len(history) == 3 and [s.epoch for s in history] == [1, 2, 3]
    assert history[-1].val_accuracy > 0.5  # chance is 0.1
    assert history[-1].train_loss < history[0].train_loss
    assert all(s.images_per_second > 0 and s.epoch_seconds > 0 and s.lr == 0.01 for s in history)
    # The held-out test split: never seen in training, also well above chance.
    assert evaluate(model, task.test, device="cpu")[1] > 0.5


def test_same_seeds_same_history(fake8):
    def run():
        seed_everything(3)
        trainer = Trainer(tiny_model(), fake8, HParams(lr=0.05, batch_size=16, epochs=2), device="cpu", seed=3)
        return [(s.train_loss, s.val_loss) for s in trainer.fit()]

    assert run() == run()


def test_best_state_dict_is_the_best_epochs_weights(fake8):
    seed_everything(0)
    model = tiny_model()
    trainer = Trainer(model, fake8, HParams(lr=0.5, batch_size=8, epochs=6), device="cpu",
                      metric="val_loss", direction="minimize")
    snapshots = {}
    trainer.fit(lambda stats: snapshots.__setitem__(stats.epoch, {k: v.clone() for k, v in model.state_dict().items()}))
    losses = [s.val_loss for s in trainer.history]
    assert trainer.best_epoch == losses.index(min(losses)) + 1 and trainer.best_value == min(losses)
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
    assert len(trainer.history) == 2 and trainer.best_epoch in (1, 2) and trainer.best_state_dict is not None


def test_patience_stops_when_the_metric_stalls(fake8):
    # lr 0 on a model without BatchNorm: the validation metric never changes after epoch 1.
    trainer = Trainer(tiny_model(), fake8, HParams(lr=0.0, batch_size=16, epochs=10, patience=2), device="cpu")
    history = trainer.fit()
    assert len(history) == 3 and trainer.stopped_early and trainer.best_epoch == 1


def test_no_patience_runs_every_epoch(fake8):
    trainer = Trainer(tiny_model(), fake8, HParams(lr=0.0, batch_size=16, epochs=4), device="cpu")
    assert len(trainer.fit()) == 4 and not trainer.stopped_early


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
    assert loss == pytest.approx(math.log(4)) and accuracy == pytest.approx((labels == 0).float().mean().item())


def test_small_train_split_still_trains(fake8):
    """A batch larger than the split: one step per epoch of the whole split, not zero steps."""
    trainer = Trainer(tiny_model(), fake8, HParams(batch_size=4096, epochs=1), device="cpu")
    assert trainer.steps_per_epoch == 1 and trainer.batch_size == len(fake8.train)
    assert math.isfinite(trainer.fit()[0].train_loss)


def test_two_trials_reuse_the_loaded_data(monkeypatch):
    calls = []
    real = data_module._READERS["fake"]
    monkeypatch.setitem(data_module._READERS, "fake", lambda cfg: calls.append(1) or real(cfg))
    cfg = DataConfig("fake", samples=64, num_classes=4, image_size=8)
    for trial in range(2):
        task = load_data(cfg, "cpu", *NORM)
        trainer = Trainer(tiny_model(), task, HParams(batch_size=16, epochs=1), device="cpu", seed=trial)
        trainer.fit()
        trainer.release()
        assert trainer.model is None and trainer.best_state_dict is not None
    assert len(calls) == 1


def test_cpu_never_touches_cuda_graph_apis(fake8, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("CUDA graph API used on CPU")

    for name in ("CUDAGraph", "graph", "Stream", "stream", "current_stream", "synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    trainer = Trainer(tiny_model(), fake8, HParams(batch_size=16, epochs=2), device="cpu",
                      settings=TrainSettings(cuda_graphs="auto"))
    assert not trainer.use_graphs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit()
    trainer.release()


@pytest.mark.parametrize("bad, message", [
    (dict(cuda_graphs="on"), "train.cuda_graphs must be one of auto, off, got 'on'"),
    (dict(amp="fp16"), "train.amp must be one of auto, off"),
])
def test_settings_refuse_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**bad)


def test_trainer_refuses_unknown_metric(fake8):
    with pytest.raises(ValueError, match="metric must be one of val_accuracy, val_loss, train_loss, got 'acc'"):
        Trainer(tiny_model(), fake8, HParams(), device="cpu", metric="acc")


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
    for graphed, eager in zip(*histories):
        assert graphed.train_loss == pytest.approx(eager.train_loss, rel=0.05)
        assert graphed.val_accuracy == pytest.approx(eager.val_accuracy, abs=0.1)


@CUDA
def test_cuda_default_path_learns_and_releases():
    task = load_data(DataConfig("digits", augment="none"), "cuda", *NORM)
    seed_everything(0)
    trainer = Trainer(build_model("resnet18", 10), task, HParams(optimizer="adamw", lr=3e-3, batch_size=128,
                                                                 epochs=8, scheduler="onecycle"), device="cuda")
    assert trainer.fit()[-1].val_accuracy > 0.5 and trainer._graph is not None  # chance: 0.1
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
    assert len(record) == 1 and len(history) == 2 and not trainer.use_graphs
