"""A model soup's arithmetic: the average of state dicts, BatchNorm statistics measured again on the averaged
network, and the greedy soup keeping only what does not lower the score. Torch alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.engine import soup


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_the_average_of_two_state_dicts_is_their_element_wise_mean():
    a, b = small_net(0).state_dict(), small_net(1).state_dict()
    mean = soup.average([a, b])
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(mean[key], (a[key] + b[key]) / 2), key
        else:  # num_batches_tracked: an integer buffer, taken as it is (recomputed anyway)
            assert torch.equal(mean[key], a[key])
    assert mean["0.weight"].dtype == a["0.weight"].dtype


def test_ingredients_of_different_networks_are_refused():
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(ValueError, match="4.weight: shapes differ"):
        soup.average([small_net(0).state_dict(), other.state_dict()])
    with pytest.raises(ValueError, match="other weights"):
        soup.average([small_net(0).state_dict(), nn.Linear(2, 2).state_dict()])


def test_batchnorm_statistics_are_measured_again_on_the_averaged_network():
    model = small_net(0)
    model.load_state_dict(soup.average([small_net(0).state_dict(), small_net(1).state_dict()]))
    bn = model[1]
    averaged_mean = bn.running_mean.clone()
    torch.manual_seed(5)
    batches = [torch.randn(8, 3, 8, 8) * 3 + 2 for _ in range(4)]
    seen = soup.recompute_batchnorm(model, batches)
    assert seen == 32
    assert not torch.allclose(bn.running_mean, averaged_mean)
    # What it holds now is the statistics of the conv's outputs over every batch: a cumulative mean, not an EMA.
    with torch.no_grad():
        outputs = torch.cat([model[0](x) for x in batches])
    assert torch.allclose(bn.running_mean, outputs.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1  # its own momentum back
    assert not model.training


def test_the_greedy_soup_rejects_an_ingredient_that_lowers_the_score():
    good = {"w": torch.tensor([1.0, 1.0])}
    also_good = {"w": torch.tensor([1.0, 0.75])}
    bad = {"w": torch.tensor([-5.0, -5.0])}

    def score_of(state):  # higher near (1, 0.9), between the two good ones: averaging them helps
        return -float((state["w"] - torch.tensor([1.0, 0.9])).abs().sum())

    ingredients = [soup.Ingredient(name, state, score_of(state))
                   for name, state in (("bad", bad), ("good", good), ("also_good", also_good))]
    result = soup.greedy(ingredients, score_of)
    assert result.kept == ["good", "also_good"]  # best first; the bad one would lower it
    assert [name for name, _ in result.tried] == ["good", "also_good", "bad"]
    assert torch.allclose(result.state["w"], torch.tensor([1.0, 0.875]))
    assert result.score == pytest.approx(-0.025)
    assert result.tried[0][1] == pytest.approx(-0.1)  # the best ingredient alone
    everything = soup.uniform(ingredients, score_of)
    assert everything.score < result.score


def test_the_starting_weights_are_named_so_that_trials_sharing_them_can_be_told(tmp_path):
    from hpsearch.engine.models import weights_identity

    assert weights_identity("resnet18", "none") == "none"
    assert weights_identity("resnet18", "DEFAULT") == "ResNet18_Weights.IMAGENET1K_V1"  # DEFAULT resolved
    torch.save(small_net(0).state_dict(), tmp_path / "a.pt")
    (tmp_path / "copy.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    torch.save(small_net(1).state_dict(), tmp_path / "b.pt")
    a, copy, b = (weights_identity("resnet18", str(tmp_path / n)) for n in ("a.pt", "copy.pt", "b.pt"))
    assert a.startswith("sha256:")
    assert a == copy  # the same bytes under another name: the same start
    assert a != b
