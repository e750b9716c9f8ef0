"""Where a trial's tensors live on a GPU, checked on the CPU: the model measured after training goes where its
batches are, and the dataset stays on the device only within the worker's share of its memory."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hpsearch.core.hparams import HParams
from hpsearch.engine import data, train
from hpsearch.engine.data import DataConfig, fits_on_device
from hpsearch.engine.models import build_model
from hpsearch.orchestration import builders

GIB = 2**30


def test_a_pruned_model_is_evaluated_on_the_device_its_batches_are_on(monkeypatch):
    """measure_trained rebuilds the best epoch's model from host weights; on a GPU trial (the meta device here,
    as any device other than the CPU) it must be moved to the device the validation batches come from."""
    spec = SimpleNamespace(task=SimpleNamespace(model=SimpleNamespace(name="resnet18", weights="none")),
                           search_space={}, train={}, settings={}, study=SimpleNamespace(cost_metrics=()))
    weights = build_model("resnet18", 4).state_dict()
    trainer = SimpleNamespace(data=SimpleNamespace(num_classes=4, val=[], image_size=16),
                              best_state_dict_cpu=lambda: weights)
    seen = []

    def evaluate(model, split, *, device, settings, batch_size=512):
        seen.append((next(model.parameters()).device, torch.device(device)))
        return 1.0, 0.5

    monkeypatch.setattr(train, "evaluate", evaluate)
    measured = builders.measure_trained(spec, HParams(prune_amount=0.5), trainer, "meta")  # type: ignore[arg-type]
    assert measured == {"val_loss": 1.0, "val_accuracy": 0.5}
    assert seen == [(torch.device("meta"), torch.device("meta"))]


# (nbytes, free, total, fraction, reserved) in GiB -> kept on the device. CUDA_MEMORY_SHARE is 1/4.
@pytest.mark.parametrize(("nbytes", "free", "total", "fraction", "reserved", "kept"), [
    (20, 100, 140, 1.0, 0, True),  # one trial per GPU: a quarter of the free 100
    (30, 100, 140, 1.0, 0, False),
    (20, 100, 140, 0.25, 0, False),  # 4 trials per GPU: a quarter of this worker's 35, not of the GPU's free 100
    (8, 100, 140, 0.25, 0, True),
    (8, 100, 140, 0.25, 5, False),  # what its allocator already holds (a teacher, say) is not there to take
    (3, 10, 140, 0.5, 0, False),  # never more than the GPU has free (the other processes' use)
    (2, 10, 140, 0.5, 0, True),
    (1, 100, 140, 0.25, 40, False),  # reserved past its share: nothing left
])
def test_the_dataset_stays_on_the_device_within_the_workers_share(nbytes, free, total, fraction, reserved, kept):
    assert fits_on_device(nbytes * GIB, free=free * GIB, total=total * GIB, fraction=fraction,
                          reserved=reserved * GIB) is kept


def test_the_in_memory_decision_reads_the_processs_memory_fraction(monkeypatch):
    """`in_memory: auto` on CUDA asks torch for this process's fraction and reservation, not only the free memory."""
    asked = []

    def fraction(device) -> float:
        asked.append(device)
        return 0.25

    fakes = {"mem_get_info": lambda device: (100 * GIB, 140 * GIB), "get_per_process_memory_fraction": fraction,
             "memory_reserved": lambda device: 0}
    for name, fake in fakes.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    cuda = torch.device("cuda", 0)
    config = DataConfig("fake", samples=100)
    side = 32 * 1024  # 3 GiB an image: 2 fit under a quarter of 35 GiB, 3 do not (under one of 100 GiB, 8 would)
    assert data._keep_in_memory(config, 2, side, cuda)
    assert not data._keep_in_memory(config, 3, side, cuda)
    assert asked == [cuda, cuda]
