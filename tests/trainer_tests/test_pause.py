"""Pausing a trial between epochs and resuming it in a fresh Trainer (engine/pause.py): the resumed epochs are the
ones an uninterrupted run trains, bit for bit on the CPU, and no epoch is trained twice."""

from __future__ import annotations

import functools

import pytest
import torch

from hpsearch.core.hparams import HParams
from hpsearch.engine import pause
from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from hpsearch.engine.train import Trainer, seed_everything

# Everything that carries state across epochs: momentum, a warm-up then cosine schedule, dropout, augmentation.
HP = HParams(lr=0.05, optimizer="sgd", momentum=0.9, batch_size=8, epochs=4, scheduler="cosine", warmup_epochs=1,
             dropout=0.2)


def fake16():
    config = DataConfig("fake", samples=40, num_classes=4, image_size=16, val_fraction=0.25, augment="standard")
    return load_data(config, "cpu", IMAGENET_MEAN, IMAGENET_STD)


def trainer(hp: HParams, seed: int, **model_options) -> Trainer:
    seed_everything(seed)
    model = build_model("resnet18", 4, dropout=hp.dropout, **model_options)
    return Trainer(model, fake16(), hp, device="cpu", seed=seed)


@functools.cache
def uninterrupted(hp: HParams, freeze: str = "none") -> Trainer:
    """The reference: the same trial trained in one go (once per module, it is only read)."""
    whole = trainer(hp, 0, freeze=freeze)
    whole.fit()
    return whole


def paused_and_resumed(hp: HParams, at: int, tmp_path, **model_options) -> tuple[Trainer, list[int]]:
    """Train `at` epochs, pause to a file, resume in a Trainer built from another seed; (it, epochs trained)."""
    trained: list[int] = []
    first = trainer(hp, 0, **model_options)
    first.fit(lambda stats: trained.append(stats.epoch), until_epoch=at)
    path = pause.save(pause.pause(first), tmp_path / "paused.pt")
    del first
    second = trainer(hp, 99, **model_options)  # another seed: what it resumes with must come from the file
    pause.resume(second, pause.load(path))
    second.fit(lambda stats: trained.append(stats.epoch))
    return second, trained


def assert_same_training(a: Trainer, b: Trainer) -> None:
    assert [s.train_loss for s in a.history] == [s.train_loss for s in b.history]
    assert [(s.val_loss, s.val_accuracy, s.lr) for s in a.history] == [(s.val_loss, s.val_accuracy, s.lr)
                                                                          for s in b.history]
    assert (a.best_epoch, a.best_value) == (b.best_epoch, b.best_value)
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name


@pytest.mark.parametrize("at", [1, 2, 3])
def test_a_resumed_trial_trains_what_an_uninterrupted_one_does_and_no_epoch_twice(at, tmp_path):
    resumed, trained = paused_and_resumed(HP, at, tmp_path)
    assert trained == [1, 2, 3, 4]  # each epoch once, across the pause
    assert_same_training(uninterrupted(HP), resumed)
    assert resumed.best_state_dict_cpu() is not None


@pytest.mark.parametrize("at", [1, 2], ids=["paused-frozen", "paused-after-unfreezing"])
def test_a_pause_on_either_side_of_unfreezing_resumes_the_same(at, tmp_path):
    hp = HParams(lr=0.01, optimizer="adam", batch_size=8, epochs=3, scheduler="cosine", unfreeze_epoch=2,
                 backbone_lr_scale=0.5)
    resumed, trained = paused_and_resumed(hp, at, tmp_path, freeze="backbone")
    assert trained == [1, 2, 3]
    assert_same_training(uninterrupted(hp, freeze="backbone"), resumed)
    assert all(p.requires_grad for p in resumed.model.parameters())


def test_until_epoch_pauses_and_fit_goes_on_in_the_same_trainer():
    t = trainer(HP, 0)
    assert [s.epoch for s in t.fit(until_epoch=2)] == [1, 2]
    assert [s.epoch for s in t.fit()] == [1, 2, 3, 4]
    assert_same_training(uninterrupted(HP), t)


def test_the_paused_file_holds_tensors_and_numbers_only(tmp_path):
    t = trainer(HP, 0)
    t.fit(until_epoch=1)
    path = pause.save(pause.pause(t), tmp_path / "paused.pt")
    assert not list(tmp_path.glob(".*partial"))  # written through a temporary name
    state = pause.load(path)  # weights_only=True: no pickled code would load
    assert state["epoch"] == 1
    assert all(v.device.type == "cpu" for v in state["model"].values())


def test_a_paused_state_that_does_not_fit_is_refused_in_one_line(tmp_path):
    t = trainer(HP, 0)
    t.fit(until_epoch=1)
    state = pause.pause(t)
    other = Trainer(build_model("mobilenet_v2", 4), fake16(), HP, device="cpu")
    with pytest.raises(pause.PausedStateError, match="do not fit this model"):
        pause.resume(other, state)
    with pytest.raises(pause.PausedStateError, match="format"):
        pause.resume(trainer(HP, 0), {**state, "format": 0})
    shorter = HParams(**{**HP.as_dict(), "epochs": 1, "warmup_epochs": 0})
    longer_state = pause.pause(uninterrupted(HP))
    with pytest.raises(pause.PausedStateError, match="trained 4 epochs; this one has 1"):
        pause.resume(trainer(shorter, 0), longer_state)


# --------------------------------------------------------------------------- PBT's exploit: one member copies another


def test_a_member_that_copies_another_resumes_with_exactly_the_donors_weights_and_keeps_its_own_record(tmp_path):
    from hpsearch.engine.mutate import change_hparams

    donor_hp = HP
    receiver_hp = HParams(**{**HP.as_dict(), "lr": 0.01})
    donor, receiver = trainer(donor_hp, 0), trainer(receiver_hp, 1)
    donor.fit(until_epoch=2)
    receiver.fit(until_epoch=2)
    own_history = list(receiver.history)
    at_boundary = pause.load(pause.save(pause.pause(donor), tmp_path / "donor.pt"))  # the donor's checkpoint

    pause.adopt(receiver, at_boundary)
    for name, tensor in at_boundary["model"].items():  # the weights it resumes with are the checkpoint's
        assert torch.equal(receiver.model.state_dict()[name], tensor), name
    donor_momenta = [s["momentum_buffer"] for s in donor.optimizer.state.values()]
    receiver_momenta = [s["momentum_buffer"] for s in receiver.optimizer.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(donor_momenta, receiver_momenta, strict=True))
    assert receiver.history == own_history  # its record is its own
    assert receiver.schedule.lr() == donor.schedule.lr()  # where the donor's schedule stands

    assert receiver.hp.lr == donor_hp.lr  # it took the donor's hyperparameters with its weights
    donor_rates = [g["lr"] for g in donor.optimizer.param_groups]
    change_hparams(receiver, {"lr": donor_hp.lr * 1.25})  # then explore: 1.25 × where the donor stands
    assert [g["lr"] for g in receiver.optimizer.param_groups] == pytest.approx([1.25 * r for r in donor_rates])
    receiver.fit()
    assert [s.epoch for s in receiver.history] == [1, 2, 3, 4]


def test_a_copy_is_made_only_at_the_boundary_both_reached():
    ahead, behind = trainer(HP, 0), trainer(HP, 1)
    ahead.fit(until_epoch=2)
    behind.fit(until_epoch=1)
    with pytest.raises(pause.PausedStateError, match="the donor paused after epoch 2; this member after 1"):
        pause.adopt(behind, pause.pause(ahead))
