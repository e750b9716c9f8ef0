"""Helpers for the spec tests: a valid base spec and a way to change one field of it."""

import copy

import pytest

from hpsearch.spec.study_spec import SpecError, parse_spec

# A small valid spec that the refusal tests change one field of.
BASE = {
    "study": {"name": "t", "n_trials": 3},
    "task": {"model": {"name": "mobilenet_v2", "weights": "none"}, "data": {"name": "fake"}},
    "train": {"epochs": 2},
    "search_space": {
        "lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}},
    },
}

DELETE = object()


def edited(path: str, value) -> dict:
    """BASE with the dotted `path` set to `value` (DELETE removes it); missing mappings are created."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def refusal(data, source="spaces/t.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source=source)
    return str(info.value)
