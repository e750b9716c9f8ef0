# ruff: noqa: E501 -- a table of exact one-line error messages, as test_refusals.py's: each case reads best on one line
"""`task.teacher` refusals that need files (an export folder, a weights file), in test_refusals.py's format: each case
edits BASE's teacher and expects one exact line naming the field; `{dir}` is the folder the files are in.

A teacher's class count is read from the head in its file (memory-mapped), so a "model.pt" holding the head alone is
enough to reach the checks after it: the input-size check builds nothing but the architecture on the meta device.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from hpsearch.cli.main import main
from hpsearch.orchestration.runner import _parent_params
from hpsearch.spec.study_spec import SpecError, parse_spec

from .helpers import BASE, refusal


def write_export(folder, model: str = "mobilenet_v3_small", head: str = "classifier.3", classes: int = 10,
                 files=("best.yaml", "model.pt", "trial.json")):
    """An export as `hpsearch best --export` writes it, its model.pt the head's weight alone."""
    folder.mkdir(parents=True)
    if "best.yaml" in files:
        (folder / "best.yaml").write_text(yaml.safe_dump({"task": {"model": {"name": model, "weights": "none"}}}))
    if "model.pt" in files:
        torch.save({f"{head}.weight": torch.zeros(classes, 4)}, folder / "model.pt")
    if "trial.json" in files:
        (folder / "trial.json").write_text(json.dumps({"metric": "val_accuracy", "value": 0.875}))
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    write_export(root / "ok")
    write_export(root / "no_model", files=("best.yaml", "trial.json"))
    write_export(root / "no_yaml", files=("model.pt",))
    write_export(root / "four", classes=4)
    write_export(root / "alexnet", model="alexnet", head="classifier.6")
    write_export(root / "other", head="fc")  # a state_dict of another architecture
    write_export(root / "unknown", model="mobilenet_v9")
    (write_export(root / "not_yaml", files=("model.pt",)) / "best.yaml").write_text("task: [unclosed\n")
    (write_export(root / "no_task", files=("model.pt",)) / "best.yaml").write_text("study: {name: x}\n")
    (root / "afile").write_text("x")
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    return root


CASES = [
    ({"export": "{dir}/no_model"}, "task.teacher.export: {dir}/no_model lacks model.pt (an export holds best.yaml, model.pt and trial.json)"),
    ({"export": "{dir}/no_yaml"}, "task.teacher.export: {dir}/no_yaml lacks best.yaml (an export holds best.yaml, model.pt and trial.json)"),
    ({"export": "{dir}/afile"}, "task.teacher.export: {dir}/afile is a file, not an export folder"),
    ({"export": "{dir}/four"}, "task.teacher.export: {dir}/four/model.pt predicts 4 classes; the task (fake) has 10"),
    ({"export": "{dir}/other"}, "task.teacher.export: {dir}/other/model.pt is not a state_dict of mobilenet_v3_small (it has no classifier.3.weight)"),
    ({"export": "{dir}/unknown"}, "task.teacher.export: {dir}/unknown/best.yaml: unknown model 'mobilenet_v9' (did you mean 'mobilenet_v2'?)"),
    ({"export": "{dir}/not_yaml"}, "task.teacher.export: {dir}/not_yaml/best.yaml: invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ({"export": "{dir}/no_task"}, "task.teacher.export: {dir}/no_task/best.yaml: names no task.model: not a best.yaml that hpsearch exported"),
    ({"export": "{dir}/alexnet"}, "task.teacher.export: alexnet cannot take the task's 16x16 images (Given input size: (192x1x1). Calculated output size: (192x0x0). Output size is too small)"),
    ({"model": "mobilenet_v3_small", "weights": "{dir}/garbage.pt"}, "task.teacher.weights: "),
    ({"model": "mobilenet_v3_small", "weights": "{dir}/four/model.pt"}, "task.teacher.weights: mobilenet_v3_small with weights {dir}/four/model.pt predicts 4 classes; the task (fake) has 10"),
    ({"model": "alexnet", "weights": "{dir}/alexnet/model.pt"}, "task.teacher.model: alexnet cannot take the task's 16x16 images (Given input size: (192x1x1). Calculated output size: (192x0x0). Output size is too small)"),
]


def with_teacher(teacher: dict, root, **data) -> dict:
    spec = copy.deepcopy(BASE)
    spec["task"]["teacher"] = {k: v.format(dir=root) for k, v in teacher.items()}
    spec["task"]["data"] = {"name": "fake", "image_size": 16, **data}
    return spec


@pytest.mark.parametrize(("teacher", "message"), CASES, ids=[str(c[0]) for c in CASES])
def test_refusal(files, teacher, message):
    got = refusal(with_teacher(teacher, files))
    if message.endswith(": "):  # the loader's own words follow (torch's, for a file that is no checkpoint)
        assert got.startswith(message)
        assert len(got) > len(message)
    else:
        assert got == message.format(dir=files)


def test_a_vision_transformer_takes_its_one_size_only():
    # 1000 classes, as its weights: the class check passes, and the input-size check (meta device) refuses 16 px.
    got = refusal(with_teacher({"model": "vit_b_16", "weights": "DEFAULT"}, "", num_classes=1000))
    assert got == ("task.teacher.model: vit_b_16 cannot take the task's 16x16 images "
                   "(Wrong image height! Expected 224 but got 16!)")


def test_a_teacher_that_fits_is_accepted_and_named_on_the_parent_run(files):
    spec = parse_spec(with_teacher({"export": "{dir}/ok"}, files))
    assert spec.to_dict()["task"]["teacher"] == {"export": f"{files}/ok"}
    assert parse_spec(spec.to_dict()) == spec  # the study's recorded spec and best.yaml read back the same
    params = _parent_params(spec)
    assert {k: v for k, v in params.items() if k.startswith("teacher")} == {
        "teacher": f"{files}/ok", "teacher_model": "mobilenet_v3_small", "teacher_weights": f"{files}/ok/model.pt",
        "teacher_val_accuracy": 0.875}
    weights = parse_spec(with_teacher({"model": "mobilenet_v3_small", "weights": "{dir}/ok/model.pt"}, files))
    assert {k: v for k, v in _parent_params(weights).items() if k.startswith("teacher")} == {
        "teacher": "mobilenet_v3_small", "teacher_model": "mobilenet_v3_small",
        "teacher_weights": f"{files}/ok/model.pt"}
    assert not any(k.startswith("teacher") for k in _parent_params(parse_spec(BASE)))


def test_an_export_not_there_yet_validates_and_run_refuses_it(files, tmp_path, capsys):
    """A space may name the export its teacher's search will write: `validate` accepts it, `run` refuses it (exit 2)
    when it makes the parent run's params, before any trial."""
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(with_teacher({"export": "{dir}/later"}, files)))
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    assert exc.value.code == 0, capsys.readouterr().err
    with pytest.raises(SpecError) as info:
        _parent_params(parse_spec(with_teacher({"export": "{dir}/later"}, files)))
    assert str(info.value) == (f"task.teacher.export: no export at {files}/later: run the teacher's search, then "
                               "`hpsearch best --export` writes it there")


def test_validate_refuses_a_teacher_with_one_line(files, tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(with_teacher({"export": "{dir}/no_model"}, files)))
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    assert out == ""
    assert err.splitlines() == [f"error: task.teacher.export: {files}/no_model lacks model.pt (an export holds "
                                "best.yaml, model.pt and trial.json)"]
