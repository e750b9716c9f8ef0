"""Searching the backbone and the input size: `model` and `image_size` under search_space, checked against the task
before any compute, and put in the task of the trial (and of an exported winner) that draws them."""

import copy

import pytest

from hpsearch.orchestration.builders import hparams_for
from hpsearch.spec.study_spec import fixed_spec, parse_spec, with_task_choices

from .helpers import BASE, refusal

BACKBONES = {"type": "categorical", "choices": ["mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5"]}
SIZES = {"type": "categorical", "choices": [32, 64]}


def searching(**entries) -> dict:
    data = copy.deepcopy(BASE)
    data["search_space"].update(entries)
    return data


def test_a_trial_trains_the_backbone_and_size_it_draws():
    spec = parse_spec(searching(model=BACKBONES, image_size=SIZES))
    drawn = {"model": "resnet18", "image_size": 64, "lr": 0.01, "optimizer": "adamw"}
    trial = with_task_choices(spec, drawn)
    assert (trial.task.model.name, trial.task.data.image_size) == ("resnet18", 64)
    assert (spec.task.model.name, spec.task.data.image_size) == ("mobilenet_v2", None)  # the study's is unchanged
    assert hparams_for(trial, drawn).lr == 0.01  # and the hyperparameters are the rest


def test_an_exported_winner_names_its_backbone_in_the_task():
    spec = parse_spec(searching(model=BACKBONES, image_size=SIZES))
    winner = fixed_spec(spec, {"model": "shufflenet_v2_x0_5", "image_size": 32, "lr": 0.02, "optimizer": "sgd"})
    assert winner.task.model.name == "shufflenet_v2_x0_5"
    assert winner.task.data.image_size == 32
    assert winner.train == {"epochs": 2, "lr": 0.02, "optimizer": "sgd"}
    assert winner.search_space == {}
    assert parse_spec(winner.to_dict()) == winner


def test_a_condition_can_follow_the_backbone():
    spec = parse_spec(searching(model=BACKBONES, dropout={"type": "float", "low": 0.0, "high": 0.5,
                                                          "when": {"model": "resnet18"}}))
    assert spec.search_space["dropout"].when == {"model": ("resnet18",)}


@pytest.mark.parametrize(("entries", "message"), [
    ({"model": {"type": "categorical", "choices": ["resnet18", "resnet81"]}},
     "search_space.model.choices[1]: unknown model 'resnet81' (did you mean 'resnet18'?)"),
    ({"model": {"type": "categorical", "choices": ["resnet18", 18]}},
     "search_space.model.choices[1]: must be a torchvision model name, got 18"),
    ({"model": {"type": "float", "low": 0, "high": 1}},
     "search_space.model.type: model is searched among listed choices: use categorical, got 'float'"),
    ({"model": "resnet18"},
     "search_space.model: must be a mapping with type: categorical and choices (to fix it, set task.model.name), "
     "got 'resnet18'"),
    ({"image_size": {"type": "categorical", "choices": [32, 32.5]}},
     "search_space.image_size.choices[1]: must be a whole number of pixels, got 32.5"),
    ({"image_size": {"type": "categorical", "choices": [32, 4]}},
     "search_space.image_size.choices[1]: must be > 4, got 4"),
    ({"image_size": {"type": "categorical", "choices": [64, 32, 64]}},
     "search_space.image_size.choices[2]: 64 is already choices[0]"),
    ({"model": {"type": "categorical", "choices": ["resnet18", "vit_b_16"]}},
     "search_space.model: vit_b_16 cannot take 32x32 images (Wrong image height! Expected 224 but got 32!)"),
])
def test_misuse_is_refused_naming_the_field(entries, message):
    assert refusal(searching(**entries)) == message


def test_a_weights_name_of_one_architecture_is_refused_with_a_searched_backbone():
    data = searching(model=BACKBONES)
    data["task"]["model"]["weights"] = "IMAGENET1K_V1"
    assert refusal(data).startswith("task.model.weights: a weights name or file fits one architecture: with model "
                                    "searched, use DEFAULT or none")


def test_finetuning_limits_hold_for_every_backbone():
    # shufflenet_v2_x0_5 has fewer stages than 6: a partial freeze of 6 blocks cannot train on it
    data = searching(model=BACKBONES)
    data["train"].update(freeze="partial", unfrozen_blocks=6)
    assert refusal(data).startswith("train.unfrozen_blocks: must be <= ")
