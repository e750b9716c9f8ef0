"""What a multi-objective trial measures at its end (builders.measure_trained): its model's deployment costs, and
with `prune_amount`/`quantize` the compressed model's accuracy and costs, on one CPU thread."""

import dataclasses

import pytest
import torch

from hpsearch.orchestration.builders import build_trainer, hparams_for, measure_trained
from hpsearch.spec.study_spec import parse_spec

SPACE = {
    "study": {"name": "t", "objectives": ["val_accuracy", "latency_ms", "size_mb"]},
    "task": {"model": {"name": "resnet18", "weights": "none"},
             "data": {"name": "digits", "image_size": 32, "val_fraction": 0.2, "augment": "none"}},
    "train": {"epochs": 1, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3},
}


@pytest.fixture(scope="module")
def trained():
    """ResNet-18 after one epoch on digits (what a trial's trainer holds at its end)."""
    spec = parse_spec(SPACE)
    hp = hparams_for(spec, {})
    trainer, _ = build_trainer(spec, hp, "cpu", seed=0)
    trainer.fit()
    return spec, hp, trainer


def test_costs_of_the_trained_model_on_one_thread(trained):
    spec, hp, trainer = trained
    torch.set_num_threads(2)
    measured = measure_trained(spec, hp, trainer, "cpu")
    assert set(measured) == {"latency_ms", "params_m", "size_mb"}  # no compression: accuracy stays the epoch's
    assert measured["params_m"] == pytest.approx(11.18, abs=0.01)
    assert measured["size_mb"] == pytest.approx(44.8, abs=0.1)  # 4 bytes a parameter
    assert torch.get_num_threads() == 2  # timed on one thread, the worker's count given back


@pytest.mark.slow
def test_a_quantized_pruned_trial_is_measured_after_compression(trained):
    spec, hp, trainer = trained
    plain = measure_trained(spec, hp, trainer, "cpu")
    compressed = measure_trained(spec, dataclasses.replace(hp, prune_amount=0.5, quantize="int8"), trainer, "cpu")
    assert compressed["params_m"] == pytest.approx(plain["params_m"] / 2, rel=0.05)
    assert compressed["size_mb"] < 0.3 * plain["size_mb"]  # int8: a quarter of the bytes
    # Its own accuracy, measured after compression (half the weights gone, no fine-tune: not the epoch's).
    assert 0 < compressed["val_accuracy"] <= 1
    assert compressed["val_loss"] != pytest.approx(trainer.history[-1].val_loss, rel=1e-3)
