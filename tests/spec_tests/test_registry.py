"""Samplers and pruners built from a spec are the Optuna objects the spec names, configured as written."""

import inspect

import optuna
import pytest

from hpsearch.search import components as search_components
from hpsearch.search import samplers
from hpsearch.spec.study_spec import PrunerSpec, SamplerSpec, parse_spec

from .helpers import BASE, edited


def test_tables_cover_the_design():
    assert list(search_components.SAMPLERS) == ["tpe", "random", "gp", "cmaes", "qmc", "grid", "nsgaii", "nsgaiii"]
    assert list(search_components.PRUNERS) == [
        "hyperband", "successive_halving", "median", "percentile", "patient", "threshold", "none",
    ]


def test_keywords_follow_the_installed_signature():
    # Everything the constructor takes, less what YAML cannot express or hpsearch derives.
    tpe = set(inspect.signature(optuna.samplers.TPESampler).parameters)
    assert set(search_components.keywords("sampler", "tpe")) == tpe - {"gamma", "weights", "constraints_func"}
    assert "search_space" not in search_components.keywords("sampler", "grid")
    assert "independent_sampler" not in search_components.keywords("sampler", "gp")
    assert "wrapped_pruner" in search_components.keywords("pruner", "patient")


def test_sampler_is_configured_as_written():
    spec = parse_spec(edited("study.sampler", {"name": "tpe", "seed": 3, "n_startup_trials": 4}))
    sampler = samplers.build_sampler(spec.study.sampler, spec.search_space)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 4


@pytest.mark.parametrize(("n_trials", "startup"), [(8, 5), (12, 5), (20, 5), (24, 6), (40, 10), (200, 10)])
def test_tpe_starts_with_a_quarter_of_the_budget_at_random_unless_told(n_trials, startup):
    data = edited("study.sampler", {"name": "tpe", "seed": 3})
    data["study"]["n_trials"] = n_trials
    spec = parse_spec(data)
    sampler = samplers.study_sampler(spec.study.sampler, spec.search_space, spec.study.n_trials)
    assert sampler._sampler(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))._n_startup_trials \
        == startup
    told = parse_spec(edited("study.sampler", {"name": "tpe", "n_startup_trials": 7}))
    told_sampler = samplers.study_sampler(told.study.sampler, told.search_space, n_trials)
    assert told_sampler._sampler(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))._n_startup_trials \
        == 7


def _first_value(sampler) -> float:
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    return trial.suggest_float("x", 0, 1)


def test_trial_streams_are_separate_reproducible_and_do_not_overlap_across_seeds():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SamplerSpec("random", {"seed": 0})
    same = [_first_value(samplers.build_sampler(spec, {}, trial_number=0)) for _ in range(2)]
    other = _first_value(samplers.build_sampler(spec, {}, trial_number=1))
    assert same[0] == same[1] != other
    # Study seed 1's trial n must not replay seed 0's trial n + 1 (as `seed + n` would): benchmarks that
    # repeat a search "with 3 seeds" would otherwise share most of their samples.
    seed0 = [_first_value(samplers.build_sampler(spec, {}, trial_number=n)) for n in range(6)]
    seed1 = [_first_value(samplers.build_sampler(SamplerSpec("random", {"seed": 1}), {}, trial_number=n))
             for n in range(6)]
    assert not set(seed0) & set(seed1)
    # The largest seed a spec accepts still gives every trial a seed numpy takes (it refuses any past
    # 2**32 - 1), each its own values, reproducibly.
    top = SamplerSpec("random", {"seed": 2**32 - 1})
    firsts = [_first_value(samplers.build_sampler(top, {}, trial_number=k)) for k in range(4)]
    assert len(set(firsts)) == 4
    assert _first_value(samplers.build_sampler(top, {}, trial_number=3)) == firsts[3]


def _search(workers: list[optuna.Study], n_trials: int) -> list[dict]:
    """Trials asked and told in turn by `workers` (Study objects, each with its own sampler, one storage)."""
    params = []
    for number in range(n_trials):
        study = workers[number % len(workers)]
        trial = study.ask()
        x = trial.suggest_float("x", -3, 3)
        kind = trial.suggest_categorical("kind", ["a", "b"])
        y = trial.suggest_int("y", 1, 8, log=True) if kind == "a" else 0  # a conditional parameter
        study.tell(trial, (x - 1) ** 2 + (0.5 if kind == "b" else 0.1 * y))
        params.append(trial.params)
    return params


def test_a_search_reproduces_from_the_study_seed_whichever_worker_samples():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SamplerSpec("tpe", {"seed": 5, "n_startup_trials": 4})

    def worker(storage, create: bool) -> optuna.Study:
        make = optuna.create_study if create else optuna.load_study
        return make(study_name="s", storage=storage, sampler=samplers.study_sampler(spec, {}, 20))

    alone = _search([worker(optuna.storages.InMemoryStorage(), True)], 12)
    again = _search([worker(optuna.storages.InMemoryStorage(), True)], 12)
    assert alone == again  # one worker: trial for trial, TPE's trials included
    storage = optuna.storages.InMemoryStorage()
    three = _search([worker(storage, True), worker(storage, False), worker(storage, False)], 12)
    assert three == alone  # three workers in turn sample what one would: the startup trials are the seed's
    other_seed = SamplerSpec("tpe", {"seed": 6, "n_startup_trials": 4})
    different = _search([optuna.create_study(sampler=samplers.study_sampler(other_seed, {}, 20))], 12)
    assert different != alone


def test_grid_takes_its_values_from_the_search_space():
    data = edited("study.sampler", "grid")
    data["train"] = {}
    data["search_space"] = {
        "lr": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
        "epochs": {"type": "int", "low": 2, "high": 6, "step": 2},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    }
    spec = parse_spec(data)
    assert samplers.grid_search_space(spec.search_space) == {
        "lr": [0.1, 0.2, 0.3], "epochs": [2, 4, 6], "optimizer": ["sgd", "adamw"],
    }
    assert isinstance(samplers.build_sampler(spec.study.sampler, spec.search_space), optuna.samplers.GridSampler)


@pytest.mark.parametrize(("pruner", "cls"), [
    ({"name": "hyperband", "min_resource": 1, "reduction_factor": 3}, optuna.pruners.HyperbandPruner),
    ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
    ({"name": "median", "n_startup_trials": 3}, optuna.pruners.MedianPruner),
    ({"name": "percentile", "percentile": 25.0}, optuna.pruners.PercentilePruner),
    ({"name": "threshold", "lower": 0.2}, optuna.pruners.ThresholdPruner),
    ({"name": "none"}, optuna.pruners.NopPruner),
])
def test_pruners(pruner, cls):
    spec = parse_spec(edited("study.pruner", pruner))
    assert type(samplers.build_pruner(spec.study.pruner)) is cls


def test_default_pruner_waits_one_step():
    pruner = samplers.build_pruner(parse_spec(BASE).study.pruner)
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert pruner._n_warmup_steps == 2


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_patient_without_a_wrapped_pruner_prunes_on_stagnation_alone():
    # PatientPruner(NopPruner()) would never prune; "none" must become wrapped_pruner=None.
    spec = PrunerSpec("patient", {"patience": 1, "wrapped_pruner": PrunerSpec("none", {})})
    assert samplers.build_pruner(spec)._wrapped_pruner is None
    nested = PrunerSpec("patient", {"patience": 1, "wrapped_pruner": PrunerSpec("median", {})})
    assert isinstance(samplers.build_pruner(nested)._wrapped_pruner, optuna.pruners.MedianPruner)
