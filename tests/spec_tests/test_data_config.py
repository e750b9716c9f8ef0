"""Every documented `task.*` option, from the YAML file to what the trainer receives.

The spec builds one config.DataConfig and the trainer loads that very object; a weights file is
told apart from a weights name by one function, for the spec and the model loader alike.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
import yaml

from hpsearch.core.data_config import DataConfig, is_weights_path
from hpsearch.core.hparams import HParams
from hpsearch.engine import data, models
from hpsearch.engine.data import clear_data_cache
from hpsearch.orchestration import builders
from hpsearch.spec.study_spec import SpecError, load_spec, parse_spec

from .helpers import edited, refusal

# The options README and docs/design.md document under task.data, each set to a non-default value below.
DOCUMENTED_DATA_OPTIONS = {
    "name", "root", "val_fraction", "image_size", "download", "augment", "num_classes", "samples", "in_memory",
    "test_fraction",  # not for image folders (they have their own test split): see the digits tests below
}

SPACE = """
study:
  name: options
  sampler: {{name: random, seed: 11}}
task:
  model: {{name: shufflenet_v2_x0_5, weights: w.bin}}
  data:
    name: imagefolder
    root: pictures
    val_fraction: 0.25
    image_size: 24
    download: true
    augment: none
    num_classes: 3
    samples: 64
{in_memory}
"""


@pytest.fixture(autouse=True)
def _fresh_data_cache():
    yield
    clear_data_cache()


@pytest.fixture
def weights_file(workdir):
    """w.bin: shufflenet_v2_x0_5 as torchvision builds it, saved as a state_dict (a name without a slash)."""
    torch.manual_seed(0)
    state = torchvision.models.get_model("shufflenet_v2_x0_5").state_dict()
    torch.save(state, workdir / "w.bin")
    return state


@pytest.mark.parametrize(("line", "in_memory"), [
    ("    in_memory: true", True),
    ("    in_memory: false", False),
    ("    in_memory: auto", "auto"),
    ("", "auto"),  # the default
], ids=["true", "false", "auto", "unset"])
def test_every_task_option_reaches_the_data_loader(workdir, weights_file, monkeypatch, line, in_memory):
    (workdir / "options.yaml").write_text(SPACE.format(in_memory=line))
    spec = load_spec(workdir / "options.yaml")
    received = {}

    def load_data(cfg, device, mean, std, split_seed=0):
        received.update(cfg=cfg, device=device, mean=mean, std=std, split_seed=split_seed)
        return "loaded"

    monkeypatch.setattr(data, "load_data", load_data)
    assert builders.load_task_data(spec, "cpu") == "loaded"

    assert received["cfg"] is spec.task.data  # the spec's own object: no field-by-field copy
    assert received["cfg"] == DataConfig(
        name="imagefolder", root="pictures", val_fraction=0.25, image_size=24, download=True, augment="none",
        num_classes=3, samples=64, in_memory=in_memory,
    )
    assert {f.name for f in dataclasses.fields(DataConfig)} == DOCUMENTED_DATA_OPTIONS
    assert received["split_seed"] == 11  # the validation split follows the study seed
    # A state_dict file is normalised with ImageNet's statistics, as torchvision's own weights are.
    assert (received["mean"], received["std"]) == (models.IMAGENET_MEAN, models.IMAGENET_STD)
    assert (spec.task.model.name, spec.task.model.weights) == ("shufflenet_v2_x0_5", "w.bin")


def test_a_bin_weights_file_reaches_the_model_loader(workdir, weights_file):
    (workdir / "options.yaml").write_text(SPACE.format(in_memory=""))
    spec = load_spec(workdir / "options.yaml")
    model = builders.build_model_for(spec, HParams(), num_classes=3)
    assert torch.equal(model.state_dict()["conv1.0.weight"], weights_file["conv1.0.weight"])  # loaded, not fresh
    assert model.fc.out_features == 3


@pytest.mark.parametrize(("value", "held_in_memory"), [("true", True), ("false", False), ("auto", True)])
def test_in_memory_from_yaml_loads_and_batches(workdir, image_folder, value, held_in_memory):
    image_folder(workdir / "pictures", "imagefolder", 3, 4, 2, size=16)
    text = SPACE.format(in_memory=f"    in_memory: {value}").replace("w.bin", "none")
    spec = parse_spec(yaml.safe_load(text))
    task = builders.load_task_data(spec, "cpu")
    assert task.config is spec.task.data
    assert task.in_memory is held_in_memory
    assert (len(task.train), len(task.val), len(task.test), task.num_classes) == (9, 3, 6, 3)
    x, y = next(task.val.batches(3))
    assert x.shape == (3, 3, 24, 24)
    assert set(y.tolist()) <= {0, 1, 2}


def test_in_memory_stays_a_boolean_in_the_resolved_spec():
    """What `validate` prints and the study records (hpsearch.spec) reads back as the same spec."""
    spec = parse_spec(yaml.safe_load(SPACE.format(in_memory="    in_memory: false").replace("w.bin", "none")))
    resolved = spec.to_dict()
    assert resolved["task"]["data"]["in_memory"] is False
    assert "in_memory: false" in yaml.safe_dump(resolved)
    assert parse_spec(yaml.safe_load(yaml.safe_dump(resolved))) == spec


@pytest.mark.parametrize(("field", "value", "message"), [
    # Values the trainer cannot use are refused by the spec, not by every worker process in turn.
    ("image_size", 4, "task.data.image_size: must be > 4, got 4"),
    ("samples", 1, "task.data.samples: must be >= 2, got 1"),
    ("in_memory", "yes", "task.data.in_memory: must be auto, true or false, got 'yes'"),
    ("in_memory", 1, "task.data.in_memory: must be auto, true or false, got 1"),
    ("test_fraction", 1.0, "task.data.test_fraction: must be in [0, 1), got 1.0"),
    ("test_fraction", -0.1, "task.data.test_fraction: must be in [0, 1), got -0.1"),
    ("test_fraction", "some", "task.data.test_fraction: must be a number, got 'some'"),
    ("test_fraction", 0.95, "task.data.test_fraction: plus val_fraction must be below 1, got 0.95 + 0.1"),
])
def test_data_values_the_trainer_refuses_are_spec_errors(field, value, message):
    assert refusal(edited(f"task.data.{field}", value)) == message


def test_a_missing_bin_weights_file_is_a_spec_error(workdir):
    assert refusal(edited("task.model.weights", "w.bin")) == "task.model.weights: file not found: w.bin"


@pytest.mark.parametrize(("weights", "is_path"), [
    ("w.bin", True), ("w.pt", True), ("w.pth", True), ("checkpoints/last", True),
    ("DEFAULT", False), ("IMAGENET1K_V1", False), ("MobileNet_V2_Weights.IMAGENET1K_V2", False), ("none", False),
])
def test_spec_and_model_loader_agree_on_weights_files(weights, is_path):
    assert is_weights_path(weights) is is_path
    if is_path:
        assert models.resolve_weights("mobilenet_v2", weights) == weights  # the loader takes it as a file too


def test_the_data_config_checks_its_own_values():
    """Direct users (benchmarks, the trainer's tests) get the same rules as the spec, as ValueError."""
    with pytest.raises(ValueError, match=r"data.image_size must be > 4, got 3"):
        DataConfig("fake", image_size=3)
    with pytest.raises(ValueError, match="data.in_memory must be auto, true or false, got 'true'"):
        DataConfig("fake", in_memory="true")  # one representation: the YAML boolean
    with pytest.raises(SpecError):
        parse_spec({"study": {"name": "x"}, "task": {"model": "resnet18", "data": {"name": "fake", "samples": 1}}})


@pytest.mark.parametrize(("test_fraction", "held_out"), [(None, 0.2), (0.1, 0.1), (0.0, 0.0)])
def test_digits_test_fraction_decides_the_split(test_fraction, held_out):
    cfg = DataConfig("digits", val_fraction=0.2, image_size=8, test_fraction=test_fraction)
    task = data.load_data(cfg, "cpu", (0.5,) * 3, (0.25,) * 3)
    train, val, test = len(task.train), len(task.val), len(task.test)
    assert cfg.held_out_test == held_out
    assert train + val + test == 1797  # every digit is in exactly one split
    assert abs(test - held_out * 1797) <= 10  # stratified per class, each rounded
    assert abs(val - 0.2 * (1797 - test)) <= 10


def test_a_dataset_with_its_own_test_split_refuses_a_test_fraction():
    space = edited("task.data", {"name": "cifar10", "test_fraction": 0.1})
    assert refusal(space) == ("task.data.test_fraction: does not apply to cifar10: its own test split is used as it "
                              "is (leave test_fraction out)")
    assert DataConfig("cifar10").held_out_test is None
