"""hpsearch.deploy.compression's pruning: global magnitude pruning, masks on while fine-tuning, then permanent;
measured with costs.py and train.evaluate. (Its int8 side needs torchao: tests/test_int8_quantization.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hpsearch.deploy import costs
from hpsearch.deploy.compression import (
    make_permanent,
    prunable_weights,
    prune_global,
    sparsity,
)
from hpsearch.engine.models import build_model
from hpsearch.engine.train import evaluate, seed_everything

from .small_nets import fit, small_cnn, trained_small_cnn


@pytest.fixture(scope="module")
def trained():
    return trained_small_cnn()


# --------------------------------------------------------------------------- pruning


def test_global_pruning_zeroes_the_smallest_weights_across_layers():
    seed_everything(0)
    model = small_cnn()
    with torch.no_grad():
        model[0].weight.mul_(100)  # the first layer's weights far larger than the others'
    n = sum(m.weight.numel() for m, _ in prunable_weights(model))
    prune_global(model, 0.5)
    assert sparsity(model) == round(0.5 * n) / n
    # One threshold for all layers: every weight pruned is smaller than every weight kept, whatever its layer;
    # so the large layer keeps (nearly) all of its weights.
    pruned = torch.cat([m.weight_orig[m.weight_mask == 0].abs() for m, _ in prunable_weights(model)])
    kept = torch.cat([m.weight_orig[m.weight_mask == 1].abs() for m, _ in prunable_weights(model)])
    assert pruned.max() <= kept.min()
    assert (model[0].weight == 0).float().mean() < 0.01
    assert model[4].bias.count_nonzero() == model[4].bias.numel()  # biases are never pruned


def test_pruning_halves_the_parameters_and_the_state_dict_loads_into_a_fresh_model():
    seed_everything(0)
    model = build_model("mobilenet_v2", 10).eval()
    before = costs.params_m(model)
    prune_global(model, 0.5)
    make_permanent(model)
    weights = sum(m.weight.numel() for m, _ in prunable_weights(model))
    assert sparsity(model) == pytest.approx(0.5, abs=1e-6)
    assert before - costs.params_m(model) == pytest.approx(weights / 2 / 1e6, rel=1e-4)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    fresh = build_model("mobilenet_v2", 10).eval()
    fresh.load_state_dict(model.state_dict())  # strict: the keys of an unpruned model
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fresh(x), model(x))
    assert sparsity(fresh) == sparsity(model)


def test_pruned_weights_stay_zero_while_training_with_masks_on():
    seed_everything(0)
    model = small_cnn()
    prune_global(model, 0.6)
    pruned = [m.weight == 0 for m, _ in prunable_weights(model)]
    start = [m.weight.detach().clone() for m, _ in prunable_weights(model)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.randint(0, 10, (8,))).backward()
        optimizer.step()
    for (m, _), zero, w0 in zip(prunable_weights(model), pruned, start, strict=True):
        assert (m.weight[zero] == 0).all()
        assert not torch.equal(m.weight[~zero], w0[~zero])  # the rest did train
    make_permanent(model)
    for (m, _), zero in zip(prunable_weights(model), pruned, strict=True):
        assert (m.weight == 0).equal(zero)


def test_fine_tuning_a_pruned_model_with_the_trainer_keeps_it_sparse_and_accurate(trained):
    model, data = trained
    pruned = copy.deepcopy(model)
    prune_global(pruned, 0.5)
    fit(pruned, data, epochs=2)
    make_permanent(pruned)
    assert sparsity(pruned) == pytest.approx(0.5, abs=1e-3)
    _, dense_acc = evaluate(model, data.val, device="cpu")
    _, pruned_acc = evaluate(pruned, data.val, device="cpu")
    assert pruned_acc > dense_acc - 0.1


def test_pruning_refuses_a_bad_amount_and_a_model_without_layers():
    with pytest.raises(ValueError, match="amount"):
        prune_global(small_cnn(), 1.0)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        prune_global(nn.Sequential(nn.ReLU()), 0.5)
