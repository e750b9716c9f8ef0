"""What a valid spec turns into: defaults, the round trip, CLI overrides, the fixed copy, the shipped spaces."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from hpsearch.spec.study_spec import (
    ParamSpec,
    PrunerSpec,
    SamplerSpec,
    SpecError,
    apply_overrides,
    fixed_spec,
    load_spec,
    parse_duration,
    parse_spec,
)

from .helpers import BASE, edited

# The README's defaults for the GPU fast paths: bf16, channels_last and CUDA graphs wherever they apply.
DEFAULT_SETTINGS = {"cuda_graphs": "auto", "amp": "auto", "channels_last": "auto"}

SPACES = Path(__file__).resolve().parents[2] / "spaces"
MINIMAL = {"study": None, "task": {"model": {"name": "resnet18"}, "data": {"name": "fake"}}}


def test_defaults_are_filled():
    spec = parse_spec(MINIMAL, source="spaces/my-space.yaml")
    s = spec.study
    assert (s.name, s.metric, s.direction, s.n_trials, s.timeout, s.storage) == (
        "my-space", "val_accuracy", "maximize", 20, None, None,
    )
    assert s.sampler == SamplerSpec("tpe", {"seed": 0})
    assert s.seed == 0
    assert s.pruner == PrunerSpec("median", {"n_warmup_steps": 2})
    assert spec.task.model.weights == "DEFAULT"
    d = spec.task.data
    assert (d.name, d.root, d.val_fraction, d.image_size, d.augment, d.download, d.in_memory) == (
        "fake", "data", 0.1, None, "standard", False, "auto",
    )
    assert spec.train == {}
    assert spec.settings == DEFAULT_SETTINGS
    assert spec.search_space == {}
    assert (spec.resources.devices, spec.resources.trials_per_device) == ("auto", "auto")
    assert (spec.tracking.uri, spec.tracking.experiment, spec.tracking.checkpoints) == (
        "sqlite:///mlruns/mlflow.db", "my-space", "complete",
    )


@pytest.mark.parametrize("metric", ["val_loss", "train_loss"])
def test_losses_are_minimized(metric):
    spec = parse_spec(edited("study.metric", metric))
    assert spec.study.direction == "minimize"


def test_values_are_normalized():
    data = edited("train", {"batch_size": 64.0, "gamma": 1, "patience": None, "nesterov": True})
    data["search_space"]["step_size"] = {"type": "categorical", "choices": [2, 4.0]}
    data["task"]["model"]["weights"] = "MobileNet_V2_Weights.IMAGENET1K_V2"
    spec = parse_spec(data)
    assert spec.train == {"batch_size": 64, "gamma": 1.0, "patience": None, "nesterov": True}
    assert type(spec.train["batch_size"]) is int
    assert type(spec.train["gamma"]) is float
    assert spec.search_space["step_size"].choices == (2, 4)
    assert all(type(c) is int for c in spec.search_space["step_size"].choices)
    assert spec.search_space["momentum"].when == {"optimizer": ("sgd",)}
    assert spec.task.model.weights == "IMAGENET1K_V2"


def test_shorthands():
    data = copy.deepcopy(BASE)
    data["study"].update(sampler="random", pruner="hyperband")
    data["task"] = {"model": "resnet18", "data": "digits"}
    data["resources"] = {"devices": "0, 2"}
    spec = parse_spec(data)
    assert spec.study.sampler == SamplerSpec("random", {"seed": 0})
    assert spec.study.pruner == PrunerSpec("hyperband", {})
    assert (spec.task.model.name, spec.task.data.name) == ("resnet18", "digits")
    assert spec.resources.devices == (0, 2)


@pytest.mark.parametrize(("devices", "expected"), [
    ("auto", "auto"), ("cpu", "cpu"), ([0, 1], (0, 1)), ("1", (1,)), (3, (3,)),
])
def test_devices(devices, expected):
    assert parse_spec(edited("resources.devices", devices)).resources.devices == expected


def test_weights_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("w.pt").write_bytes(b"")
    assert parse_spec(edited("task.model.weights", "w.pt")).task.model.weights == "w.pt"


def test_patient_pruner_nests_a_pruner():
    spec = parse_spec(edited("study.pruner", {"name": "patient", "patience": 2}))
    assert spec.study.pruner == PrunerSpec("patient", {"patience": 2, "wrapped_pruner": PrunerSpec("none", {})})
    spec = parse_spec(edited("study.pruner", {"name": "patient", "patience": 2, "wrapped_pruner": "median"}))
    assert spec.study.pruner.kwargs["wrapped_pruner"] == PrunerSpec("median", {})


def test_condition_on_a_fixed_parameter():
    data = edited("train.optimizer", "sgd")
    del data["search_space"]["optimizer"]
    spec = parse_spec(data)
    assert spec.search_space["momentum"].when == {"optimizer": ("sgd",)}


def test_search_space_keeps_file_order():
    assert list(parse_spec(BASE).search_space) == ["lr", "optimizer", "momentum"]


# ---------------------------------------------------------------------------- round trip

RICH = edited("study", {
    "name": "rich", "metric": "val_loss", "n_trials": 5, "timeout": "1h30m", "storage": "sqlite:///x.db",
    "sampler": {"name": "grid", "seed": 3},
    "pruner": {"name": "patient", "patience": 2, "wrapped_pruner": {"name": "percentile", "percentile": 25.0}},
})
RICH["search_space"] = {
    "lr": {"type": "float", "low": 0.01, "high": 0.1, "step": 0.03},
    "epochs": {"type": "int", "low": 2, "high": 6, "step": 2},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw", "rmsprop"]},
    "momentum": {"type": "categorical", "choices": [0.8, 0.9], "when": {"optimizer": ["sgd", "rmsprop"]}},
}
RICH["train"] = {"amp": "off"}
RICH["resources"] = {"devices": [0, 1], "trials_per_device": 2}
RICH["tracking"] = {"experiment": "elsewhere", "checkpoints": "all"}


@pytest.mark.parametrize("data", [BASE, MINIMAL, RICH], ids=["base", "minimal", "rich"])
def test_round_trip(data):
    spec = parse_spec(data, source="spaces/x.yaml")
    resolved = spec.to_dict()
    assert parse_spec(resolved) == spec
    # Plain types only: it goes through YAML (best.yaml) and JSON (an Optuna user attribute).
    assert yaml.safe_load(yaml.safe_dump(resolved)) == resolved
    assert json.loads(json.dumps(resolved)) == resolved


def test_to_dict_fills_every_default():
    resolved = parse_spec(MINIMAL, source="a.yaml").to_dict()
    assert resolved["study"] == {
        "name": "a", "metric": "val_accuracy", "direction": "maximize", "n_trials": 20, "timeout": None,
        "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "median", "n_warmup_steps": 2}, "storage": None,
    }
    assert resolved["task"]["data"] == {
        "name": "fake", "root": "data", "val_fraction": 0.1, "test_fraction": None, "image_size": None,
        "download": False, "augment": "standard", "num_classes": 10, "samples": 512, "in_memory": "auto",
    }
    assert resolved["train"] == DEFAULT_SETTINGS
    assert resolved["resources"] == {"devices": "auto", "trials_per_device": "auto"}
    assert resolved["tracking"] == {"uri": "sqlite:///mlruns/mlflow.db", "experiment": "a", "checkpoints": "complete"}


def test_param_to_dict():
    rich = parse_spec(RICH).search_space
    assert rich["lr"].to_dict() == {"type": "float", "low": 0.01, "high": 0.1, "log": False, "step": 0.03}
    assert rich["momentum"].to_dict() == {
        "type": "categorical", "choices": [0.8, 0.9], "when": {"optimizer": ["sgd", "rmsprop"]},
    }
    assert ParamSpec("x", "categorical", choices=(1,), when={"y": ("a",)}).to_dict()["when"] == {"y": "a"}


# ---------------------------------------------------------------------------- overrides


def test_overrides():
    spec = parse_spec(BASE)
    out = apply_overrides(
        spec, n_trials="7", timeout="30m", devices="0,1", trials_per_device=2, storage="postgresql://h/db",
        tracking_uri="http://mlflow:5000", study_name="other", seed=5,
    )
    assert (out.study.n_trials, out.study.timeout, out.study.storage, out.study.name) == (
        7, 1800.0, "postgresql://h/db", "other",
    )
    assert out.study.seed == 5
    assert out.study.sampler.kwargs["seed"] == 5
    assert (out.resources.devices, out.resources.trials_per_device) == ((0, 1), 2)
    assert (out.tracking.uri, out.tracking.experiment) == ("http://mlflow:5000", "other")
    assert apply_overrides(spec) == spec
    assert spec.study.n_trials == 3  # the original is untouched


def test_study_name_keeps_an_explicit_experiment():
    spec = parse_spec(edited("tracking.experiment", "mine"))
    assert apply_overrides(spec, study_name="other").tracking.experiment == "mine"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("n_trials", 0, "--n-trials: must be > 0, got 0"),
    ("n_trials", "ten", "--n-trials: must be an integer, got 'ten'"),
    ("timeout", "soon", "--timeout: must be a duration like 8h, 30m, 90s or 1h30m, got 'soon'"),
    ("timeout", "0", "--timeout: must be > 0, got '0'"),
    ("devices", "gpu", "--devices: must be auto, cpu, or GPU indices like 0,1 or [0, 1], got 'gpu'"),
    ("devices", "0,0", "--devices: lists a GPU twice, got '0,0'"),
    ("trials_per_device", "0", "--trials-per-device: must be > 0, got 0"),
    ("storage", "", "--storage: must be a non-empty string, got ''"),
    ("tracking_uri", " ", "--tracking-uri: must be a non-empty string, got ' '"),
    ("study_name", "a b", "--study-name: must be letters, digits, '.', '_' or '-', got 'a b'"),
    ("seed", -3, "--seed: must be in [0, 4294967295], got -3"),
    ("seed", "x", "--seed: must be an integer, got 'x'"),
])
def test_override_refusals(option, value, message):
    with pytest.raises(SpecError) as info:
        apply_overrides(parse_spec(BASE), **{option: value})
    assert str(info.value) == message


@pytest.mark.parametrize(("text", "seconds"), [
    ("8h", 28800), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("1h 30m", 5400), ("2d", 172800),
    ("1.5h", 5400), ("45", 45), (45, 45), (2.5, 2.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "8x", "30m1h", None, True, "-5m", "inf", float("inf"), "1e3"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="must be a duration like 8h, 30m, 90s or 1h30m"):
        parse_duration(text)


# ---------------------------------------------------------------------------- fixed_spec


def test_fixed_spec():
    spec = parse_spec(BASE, source="spaces/t.yaml")
    fixed = fixed_spec(spec, {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9})
    assert fixed.search_space == {}
    assert fixed.train == {"epochs": 2, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9}
    assert fixed.study == spec.study
    assert fixed.task == spec.task
    assert parse_spec(yaml.safe_load(yaml.safe_dump(fixed.to_dict()))) == fixed
    assert spec.search_space  # the original is untouched


def test_fixed_spec_refuses_bad_values():
    spec = parse_spec(BASE)
    with pytest.raises(SpecError, match=r"^train\.optimizer: must be one of sgd, adam, adamw, rmsprop, got 'x'$"):
        fixed_spec(spec, {"optimizer": "x"})
    message = r"^train\.lern_rate: unknown hyperparameter 'lern_rate' \(did you mean 'lr'\?\)$"
    with pytest.raises(SpecError, match=message):
        fixed_spec(spec, {"lern_rate": 0.1})


def test_fixed_spec_of_a_grid_search_still_validates():
    fixed = fixed_spec(parse_spec(RICH), {"lr": 0.04, "epochs": 4, "optimizer": "adamw"})
    assert parse_spec(fixed.to_dict()) == fixed


# ---------------------------------------------------------------------------- shipped spaces


@pytest.mark.parametrize("name", ["quickstart", "mnv2_cifar", "alexnet_tinyimagenet"])
def test_shipped_spaces_validate(name):
    spec = load_spec(SPACES / f"{name}.yaml")
    assert parse_spec(spec.to_dict()) == spec
    assert spec.search_space


def test_mnv2_cifar_is_the_design_example():
    spec = load_spec(SPACES / "mnv2_cifar.yaml")
    assert spec.study.name == "mnv2-cifar10"
    assert spec.study.timeout == 8 * 3600
    assert spec.study.sampler == SamplerSpec("tpe", {"seed": 42})
    assert spec.study.pruner == PrunerSpec("hyperband", {"min_resource": 1, "reduction_factor": 3})
    assert (spec.task.model.name, spec.task.model.weights) == ("mobilenet_v2", "DEFAULT")
    assert spec.task.data.download is True
    assert list(spec.search_space) == [
        "lr", "batch_size", "epochs", "dropout", "optimizer", "momentum", "weight_decay", "scheduler",
    ]


def test_quickstart_runs_offline_and_prunes():
    spec = load_spec(SPACES / "quickstart.yaml")
    assert spec.task.data.name == "digits"
    assert spec.task.model.weights == "none"
    assert spec.study.pruner.name != "none"
    assert spec.study.n_trials >= 10
