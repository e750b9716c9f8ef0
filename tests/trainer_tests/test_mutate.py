"""Changing a trial's mutable hyperparameters between epochs (engine/mutate.py, PBT's explore step): each change
reaches what the next step reads, and the learning-rate schedule goes on from where it stands at the new level."""

from __future__ import annotations

import pytest
import torch

from hpsearch.core.hparams import HParams
from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from hpsearch.engine.mutate import change_hparams
from hpsearch.engine.train import Trainer, seed_everything


def fake16():
    config = DataConfig("fake", samples=40, num_classes=4, image_size=16, val_fraction=0.25)
    return load_data(config, "cpu", IMAGENET_MEAN, IMAGENET_STD)


def trainer(hp: HParams, tiny: bool = False) -> Trainer:
    seed_everything(0)
    model = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)) if tiny  # only the schedule
             else build_model("resnet18", 4, dropout=hp.dropout))
    return Trainer(model, fake16(), hp, device="cpu")


@pytest.mark.parametrize("scheduler", ["cosine", "step", "exponential", "onecycle", "none"])
@pytest.mark.parametrize("warmup", [0, 2])  # 2: changed inside the warm-up, before the main schedule starts
def test_a_new_lr_moves_the_whole_rest_of_the_schedule_by_its_factor(scheduler, warmup):
    hp = HParams(lr=0.02, optimizer="sgd", batch_size=8, epochs=5, scheduler=scheduler, warmup_epochs=warmup)
    same, changed = trainer(hp, tiny=True), trainer(hp, tiny=True)
    same.fit(until_epoch=1)
    changed.fit(until_epoch=1)
    change_hparams(changed, {"lr": 0.05})  # × 2.5
    assert changed.hp.lr == 0.05
    same.fit()
    changed.fit()
    for a, b in zip(same.history[1:], changed.history[1:], strict=True):
        assert b.lr == pytest.approx(2.5 * a.lr, rel=1e-6), (a.epoch, a.lr, b.lr)


def test_backbone_lr_scale_moves_the_backbone_groups_only():
    hp = HParams(lr=0.01, optimizer="adamw", batch_size=8, epochs=3, scheduler="cosine", backbone_lr_scale=0.5)
    t = trainer(hp)
    t.fit(until_epoch=1)
    before = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    change_hparams(t, {"backbone_lr_scale": 0.1})
    after = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert after["head"] == before["head"]
    assert after["backbone"] == pytest.approx(before["backbone"] * 0.2)


def test_settings_the_next_step_reads_are_changed_in_place():
    hp = HParams(lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=1e-4, batch_size=8, epochs=3, dropout=0.1)
    t = trainer(hp)
    t.fit(until_epoch=1)
    model = t.model
    new = change_hparams(t, {"weight_decay": 5e-4, "momentum": 0.5, "dropout": 0.4, "label_smoothing": 0.2})
    assert t.model is model  # nothing rebuilt
    assert all(g["weight_decay"] == 5e-4 and g["momentum"] == 0.5 for g in t.optimizer.param_groups)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.4]  # the head's, only
    assert t.criterion.label_smoothing == 0.2
    assert (new.weight_decay, new.dropout) == (5e-4, 0.4)
    t._eager_steps = 7  # as after a capture's warm-up: a graph must be captured again with the new values
    change_hparams(t, {"dropout": 0.3})
    assert t._eager_steps == 0
    assert t._graph is None
    t.fit()
    assert [s.epoch for s in t.history] == [1, 2, 3]


def test_what_shapes_the_model_or_its_loop_cannot_change():
    t = trainer(HParams(epochs=2, batch_size=8))
    with pytest.raises(ValueError, match="cannot change batch_size, optimizer while training"):
        change_hparams(t, {"batch_size": 4, "optimizer": "adam"})
    with pytest.raises(ValueError, match="backbone_lr_scale: the trial was built with one optimizer group"):
        change_hparams(t, {"backbone_lr_scale": 0.5})


def test_a_schedule_replays_the_changes_at_their_epochs():
    from hpsearch.engine.mutate import replay

    hp = HParams(lr=0.02, optimizer="sgd", batch_size=8, epochs=4, scheduler="cosine")
    by_hand = trainer(hp, tiny=True)
    by_hand.fit(until_epoch=1)
    change_hparams(by_hand, {"lr": 0.04})
    by_hand.fit(until_epoch=3)
    change_hparams(by_hand, {"lr": 0.01, "weight_decay": 1e-4})
    by_hand.fit()
    replayed = trainer(hp, tiny=True)
    epochs = []
    replay(replayed, [(4, {"lr": 0.01, "weight_decay": 1e-4}), (2, {"lr": 0.04})], lambda s: epochs.append(s.epoch))
    assert epochs == [1, 2, 3, 4]
    assert [s.train_loss for s in replayed.history] == [s.train_loss for s in by_hand.history]
    assert [s.lr for s in replayed.history] == [s.lr for s in by_hand.history]
    with pytest.raises(ValueError, match="schedule: epoch 9 is outside 1..4"):
        replay(trainer(hp, tiny=True), [(9, {"lr": 0.1})])
