"""Population-based training's decisions at an interval boundary (search/pbt.py): who copies whom, and how the
copied hyperparameters are perturbed."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from hpsearch.search.pbt import RESAMPLE, donor, explore, quantile_size, sample
from hpsearch.search.space import ParamSpec

SCORES = {0: 0.9, 1: 0.5, 2: 0.7, 3: 0.2, 4: 0.8, 5: 0.4, 6: 0.6, 7: 0.3}  # 8 members: top 0, 4; bottom 3, 7


def test_the_bottom_quantile_copies_from_the_top_and_the_rest_keep_training():
    rng = random.Random(0)
    copies = {m: donor(m, SCORES, 0.25, maximize=True, rng=rng) for m in SCORES}
    assert {m for m, d in copies.items() if d is not None} == {3, 7}
    draws = Counter(donor(3, SCORES, 0.25, maximize=True, rng=rng) for _ in range(400))
    assert set(draws) == {0, 4}  # both of the top quantile, nobody else
    assert min(draws.values()) > 150


def test_a_minimized_metric_ranks_the_other_way_and_nan_ranks_last():
    losses = {0: 0.3, 1: 1.2, 2: math.nan, 3: 0.4}
    rng = random.Random(0)
    assert donor(2, losses, 0.25, maximize=False, rng=rng) == 0  # nan is the worst loss
    assert donor(1, losses, 0.25, maximize=False, rng=rng) is None  # second worst: above the bottom quarter
    assert donor(0, losses, 0.25, maximize=False, rng=rng) is None


def test_ranked_among_those_that_reported_at_this_boundary():
    rng = random.Random(0)
    assert donor(1, {1: 0.5}, 0.25, maximize=True, rng=rng) is None  # alone: nobody to rank against
    assert donor(1, {0: 0.9, 1: 0.5}, 0.25, maximize=True, rng=rng) == 0  # two reported: the worse copies
    assert donor(9, SCORES, 0.25, maximize=True, rng=rng) is None  # it has not reported here yet
    assert [quantile_size(n, 0.25) for n in (2, 3, 4, 8, 9)] == [1, 1, 1, 2, 3]
    assert quantile_size(4, 0.5) == 2


SPACE = {
    "lr": ParamSpec("lr", "float", 1e-4, 1e-1, log=True),
    "dropout": ParamSpec("dropout", "float", 0.0, 0.5),
    "label_smoothing": ParamSpec("label_smoothing", "categorical", choices=(0.0, 0.1, 0.2)),
    "momentum": ParamSpec("momentum", "float", 0.8, 0.99, step=0.01),
}


def test_explore_multiplies_by_a_factor_inside_the_range_or_resamples():
    rng = random.Random(1)
    params = {"lr": 0.01, "dropout": 0.45, "label_smoothing": 0.1, "momentum": 0.9}
    perturb = {"lr": (0.8, 1.25), "dropout": (1.25,), "label_smoothing": RESAMPLE}
    seen_lr = set()
    for _ in range(200):
        new = explore(params, perturb, SPACE, resample_probability=0.0, rng=rng)
        seen_lr.add(new["lr"])
        assert new["dropout"] == 0.5  # 0.45 × 1.25 clamped to the range's top
        assert new["label_smoothing"] in (0.0, 0.1, 0.2)
        assert new["momentum"] == 0.9  # not perturbed
    assert sorted(seen_lr) == pytest.approx([0.008, 0.0125])  # one of the two factors, each drawn
    resampled = [explore(params, {"lr": (0.8, 1.25)}, SPACE, resample_probability=1.0, rng=rng)["lr"]
                 for _ in range(200)]
    assert all(1e-4 <= v <= 1e-1 for v in resampled)
    assert len(set(resampled)) == 200


def test_a_fresh_draw_respects_log_scale_steps_and_types():
    rng = random.Random(2)
    lrs = [sample(SPACE["lr"], rng) for _ in range(2000)]
    below = sum(v < 1e-2 for v in lrs) / len(lrs)
    assert below == pytest.approx(2 / 3, abs=0.05)  # log-uniform: two of the three decades lie below 1e-2
    momenta = {sample(SPACE["momentum"], rng) for _ in range(300)}
    assert all(abs(m * 100 - round(m * 100)) < 1e-9 for m in momenta)
    assert min(momenta) >= 0.8
    assert max(momenta) <= 0.99
    assert isinstance(sample(ParamSpec("unfrozen_blocks", "int", 0, 4), rng), int)
