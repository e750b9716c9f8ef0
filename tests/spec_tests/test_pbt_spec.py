"""`study.scheduler: {name: pbt, ...}`: what a population-based study states, its defaults, and every combination
that cannot work refused in one line naming the field."""

from __future__ import annotations

import copy

import pytest
import yaml

from hpsearch.cli.main import main
from hpsearch.core.hparams import MUTABLE_HPARAMS
from hpsearch.spec.pbt_spec import DEFAULT_FACTORS, RESAMPLE
from hpsearch.spec.study_spec import parse_spec

from .helpers import refusal

PBT = {
    "study": {"name": "p", "scheduler": {"name": "pbt", "population": 4, "interval": 2,
                                         "perturb": {"lr": [0.5, 2.0], "dropout": "resample"}}},
    "task": {"model": {"name": "mobilenet_v2", "weights": "none"}, "data": {"name": "fake"}},
    "train": {"epochs": 6},
    "search_space": {
        "lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "weight_decay": {"type": "float", "low": 0.0, "high": 1.0e-3},
        "label_smoothing": {"type": "categorical", "choices": [0.0, 0.1]},
    },
}


def pbt(**study) -> dict:
    data = copy.deepcopy(PBT)
    for key, value in study.items():
        if key in ("population", "interval", "quantile", "perturb", "resample_probability", "name",
                   "checkpoint_budget_mb"):
            data["study"]["scheduler"][key] = value
        else:
            data["study"][key] = value
    return data


def test_a_population_study_states_its_members_and_how_each_parameter_moves():
    spec = parse_spec(PBT, source="p.yaml")
    scheduler = spec.study.scheduler
    assert (scheduler.population, scheduler.interval, scheduler.quantile) == (4, 2, 0.25)
    assert scheduler.checkpoint_budget_mb == 4096
    assert spec.study.n_trials == 4  # its trials are its members
    assert spec.study.pruner.name == "none"  # the bottom copies the top instead
    # Named as written; an unnamed float by Ray's default factors; an unnamed choice resampled.
    assert scheduler.perturb == {"lr": (0.5, 2.0), "dropout": RESAMPLE, "weight_decay": DEFAULT_FACTORS,
                                 "label_smoothing": RESAMPLE}
    # The resolved spec (what the study keeps and `best --export` writes) reads back the same.
    assert parse_spec(spec.to_dict(), source="p.yaml").study.scheduler == scheduler


def test_the_mutable_hyperparameters_are_the_ones_read_afresh_at_every_step():
    assert set(MUTABLE_HPARAMS) == {"lr", "weight_decay", "momentum", "dropout", "label_smoothing",
                                    "backbone_lr_scale", "distill_alpha", "distill_temperature"}


S = "study.scheduler"
CASES = [
    (pbt(name="asha"), f"{S}.name: must be one of pbt, got 'asha'"),
    (pbt(population=1), f"{S}.population: must be at least 2 (one member has no one to copy), got 1"),
    (pbt(interval=0), f"{S}.interval: must be > 0, got 0"),
    (pbt(interval=6), f"{S}.interval: must be below train.epochs (6), or no member ever copies another, got 6"),
    (pbt(quantile=0.7), f"{S}.quantile: must be in (0, 0.5] (the bottom and top fractions), got 0.7"),
    (pbt(resample_probability=2), f"{S}.resample_probability: must be in [0, 1], got 2"),
    (pbt(checkpoint_budget_mb=0), f"{S}.checkpoint_budget_mb: must be > 0, got 0"),
    (pbt(perturb={"lr": [0.8, -1]}), f"{S}.perturb.lr: factors must be > 0, got -1.0"),
    (pbt(perturb={"lr": "double"}),
     f"{S}.perturb.lr: must be a list of factors such as [0.8, 1.25], or resample, got 'double'"),
    (pbt(perturb={"momentum": "resample"}), f"{S}.perturb.momentum: not searched: name a parameter of search_space"),
    (pbt(perturb={"label_smoothing": [0.5]}),
     f"{S}.perturb.label_smoothing: factors need a float range; label_smoothing is categorical: use resample"),
    (pbt(pruner={"name": "median"}), "study.pruner: population-based training replaces pruning (the bottom of the "
                                     "population copies the top): use pruner: none, got 'median'"),
    (pbt(n_trials=10), "study.n_trials: a population-based study's trials are its 4 members "
                       "(study.scheduler.population): leave n_trials out, got 10"),
    (pbt(objectives=[{"metric": "val_accuracy"}, {"metric": "latency_ms"}]),
     "study.objectives: population-based training (study.scheduler) ranks members by one metric: use study.metric"),
]


@pytest.mark.parametrize(("data", "message"), CASES)
def test_a_population_study_that_cannot_work_is_refused_naming_the_field(data, message):
    assert refusal(data) == message


@pytest.mark.parametrize("name", ["batch_size", "optimizer", "epochs"])
def test_a_searched_hyperparameter_that_shapes_the_model_or_its_loop_is_refused(name):
    data = copy.deepcopy(PBT)
    data["search_space"][name] = ({"type": "categorical", "choices": ["sgd", "adamw"]} if name == "optimizer"
                                  else {"type": "int", "low": 2, "high": 8})
    assert refusal(data) == (f"search_space.{name}: cannot change while a population trains; with study.scheduler "
                             f"fix it under train: (PBT mutates {', '.join(MUTABLE_HPARAMS)})")


def test_early_stopping_is_refused_so_that_the_budget_stays_exact():
    data = pbt()
    data["train"]["patience"] = 2
    assert refusal(data).startswith("train.patience: a population member trains all its epochs")


def test_validate_accepts_it_and_shows_the_scheduler(tmp_path, capsys):
    space = tmp_path / "p.yaml"
    space.write_text(yaml.safe_dump(PBT))
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(space)])
    assert exc.value.code == 0
    assert "scheduler:" in capsys.readouterr().out
