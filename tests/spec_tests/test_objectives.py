"""`study.objectives`: a multi-objective study's file, what it resolves to, and every misuse refused by name."""

import copy

import pytest

from hpsearch.spec.spec_types import Objective
from hpsearch.spec.study_spec import parse_spec

from .helpers import BASE, refusal

ACC_LATENCY = [{"metric": "val_accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]


def with_study(**study) -> dict:
    data = copy.deepcopy(BASE)
    data["study"] = {"name": "t", "n_trials": 3, **study}
    return data


def test_objectives_resolve_in_order_with_training_by_the_first_epoch_metric():
    spec = parse_spec(with_study(objectives=["params_m", "val_loss", {"metric": "latency_ms"}]))
    assert spec.study.multi
    assert spec.study.targets == (Objective("params_m", "minimize"), Objective("val_loss", "minimize"),
                                  Objective("latency_ms", "minimize"))
    # the checkpoint is the best epoch by val_loss, the one objective training can watch
    assert (spec.study.metric, spec.study.direction) == ("val_loss", "minimize")
    assert spec.study.cost_metrics == ("params_m", "latency_ms")
    assert spec.study.pruner.name == "none"  # Optuna cannot prune several objectives


def test_the_resolved_spec_reads_back_the_same():
    spec = parse_spec(with_study(objectives=ACC_LATENCY, sampler={"name": "nsgaii", "seed": 3}))
    again = parse_spec(spec.to_dict())
    assert again.study == spec.study
    assert "metric" not in spec.to_dict()["study"]


def test_one_objective_is_unchanged():
    spec = parse_spec(with_study(metric="val_loss"))
    assert not spec.study.multi
    assert spec.study.cost_metrics == ()
    assert spec.study.targets == (Objective("val_loss", "minimize"),)
    assert spec.study.pruner.name == "median"


@pytest.mark.parametrize(("study", "message"), [
    ({"objectives": ACC_LATENCY, "metric": "val_accuracy"},
     "study.metric: give either study.metric/direction (one objective) or study.objectives (several), not both"),
    ({"objectives": ACC_LATENCY[:1]},
     "study.objectives: must be a list of 2 or 3 objectives ({metric: …, direction: …}), got a list; "
     "one objective is study.metric"),
    ({"objectives": ACC_LATENCY + ["params_m", "size_mb"]},
     "study.objectives: must be a list of 2 or 3 objectives ({metric: …, direction: …}), got a list; "
     "one objective is study.metric"),
    ({"objectives": ["val_accuracy", "speed"]},
     "study.objectives[1].metric: must be one of val_accuracy, val_loss, train_loss, latency_ms, params_m, size_mb, "
     "got 'speed'"),
    ({"objectives": ["val_accuracy", {"metric": "latency_ms", "direction": "maximize"}]},
     "study.objectives[1].direction: must be minimize for latency_ms, got 'maximize'"),
    ({"objectives": ["val_accuracy", "val_accuracy"]},
     "study.objectives[1].metric: val_accuracy is already an objective"),
    ({"objectives": ["latency_ms", "size_mb"]},
     "study.objectives: needs at least one of val_accuracy, val_loss, train_loss (training keeps the best epoch "
     "by it)"),
    ({"objectives": ["val_accuracy", {"metric": "latency_ms", "goal": "low"}]},
     "study.objectives[1].goal: unknown key 'goal' (valid: metric, direction)"),
    ({"objectives": ACC_LATENCY, "pruner": "median"},
     "study.pruner: Optuna cannot prune multi-objective trials: use pruner: none (the default with "
     "study.objectives), got 'median'"),
    ({"objectives": ACC_LATENCY, "sampler": "cmaes"},
     "study.sampler.name: cmaes optimises one objective; with study.objectives use one of tpe, random, gp, qmc, "
     "grid, nsgaii, nsgaiii"),
])
def test_misuse_is_refused_naming_the_field(study, message):
    assert refusal(with_study(**study)) == message


@pytest.mark.parametrize("sampler", ["tpe", "nsgaii", "nsgaiii", "gp", "random"])
def test_the_multi_objective_samplers_are_accepted(sampler):
    assert parse_spec(with_study(objectives=ACC_LATENCY, sampler=sampler)).study.sampler.name == sampler


COMPRESSION_ONLY_MEASURED = ("is applied after training and measured by a multi-objective study's objectives: set "
                             "study.objectives (e.g. val_accuracy and latency_ms), or compress one trial with "
                             "`hpsearch compress`")


def test_compression_after_training_needs_objectives_that_measure_it():
    searched = with_study()
    searched["search_space"]["prune_amount"] = {"type": "float", "low": 0.0, "high": 0.7}
    assert refusal(searched) == f"search_space.prune_amount: {COMPRESSION_ONLY_MEASURED}"
    fixed = with_study()
    fixed["train"]["quantize"] = "int8"
    assert refusal(fixed) == f"train.quantize: {COMPRESSION_ONLY_MEASURED}"
    fixed["study"]["objectives"] = ACC_LATENCY
    searched["study"]["objectives"] = ACC_LATENCY
    assert parse_spec(fixed).train["quantize"] == "int8"
    assert parse_spec(searched).search_space["prune_amount"].high == 0.7
    bad = with_study(objectives=ACC_LATENCY)
    bad["train"]["quantize"] = "int4"
    assert refusal(bad) == "train.quantize: must be one of none, int8, got 'int4'"
