"""The shipped fine-tuning and distillation spaces, scaled down to digits at 16 px, run end to end.

Each copy keeps its file's search space (hyperparameters, conditions) and task, except the data (digits: offline)
and the weights (none, or a state_dict file the test writes: nothing is downloaded); trials train one epoch.
The distillation's teacher is an export of spaces/resnet_cifar.yaml's copy, written by the export's own code where
`hpsearch best --export` puts it, which is where spaces/distill_cifar.yaml looks for it.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from hpsearch.cli.main import cli, main
from hpsearch.core.locations import DEFAULT_TRACKING_URI
from hpsearch.engine.models import build_model
from hpsearch.results.export import _write_files, default_export_dir
from hpsearch.spec.study_spec import load_spec
from hpsearch.tracking.mlflow_client import client_for

from .support import REPO

pytestmark = pytest.mark.slow

DIGITS = {"name": "digits", "image_size": 16, "val_fraction": 0.2, "augment": "none"}


def scaled_down(workdir, space: str, n_trials: int, **task) -> str:
    """spaces/<space>.yaml on digits, `n_trials` one-epoch trials on one CPU slot, `task` laid over its task."""
    data = yaml.safe_load((REPO / "spaces" / f"{space}.yaml").read_text())
    data["study"].update(n_trials=n_trials, pruner={"name": "none"})
    data["study"].pop("timeout", None)
    data["task"].update(data=DIGITS, **task)
    data["train"]["epochs"] = 1
    data["search_space"].pop("epochs", None)
    data["search_space"]["batch_size"] = {"type": "categorical", "choices": [128, 256]}
    data["resources"] = {"devices": "cpu", "trials_per_device": 1}
    path = workdir / f"{space}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One thread per worker: these trials are small, and threads that spin-wait on a shared box cost CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def runs_of(experiment: str) -> tuple[dict, list]:
    """(the study's parent run's params, its trial runs)."""
    client = client_for(DEFAULT_TRACKING_URI)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpsearch.role") == "study"]
    assert len(parents) == 1
    return parents[0].data.params, [r for r in runs if r.data.tags.get("hpsearch.role") == "trial"]


def test_the_finetuning_space_runs(workdir):
    weights = workdir / "mnv2_imagenet_shaped.pt"  # as torchvision's: 1000 classes, here untrained
    torch.save(build_model("mobilenet_v2", 1000).state_dict(), weights)
    space = scaled_down(workdir, "mnv2_cifar_finetune", 2, model={"name": "mobilenet_v2", "weights": str(weights)})
    result = invoke("run", space)
    assert result.exit_code == 0, result.output
    assert "2/2 finished (2 complete" in result.output
    _, trials = runs_of("mnv2-cifar10-finetune")
    assert len(trials) == 2
    assert all(r.data.params["freeze"] in ("none", "backbone", "partial") for r in trials)
    assert not any("distill_alpha" in r.data.params for r in trials)  # no teacher: no distillation params


def write_teacher_export(workdir, space: str) -> float:
    """What `hpsearch best --export` writes for the winner of `space` (its own code writes it: best.yaml, model.pt
    from the trial's checkpoint, trial.json), here for a ResNet-18 that did not train; returns its val accuracy."""
    spec = load_spec(space)
    checkpoint = workdir / "checkpoint.pt"
    torch.save(build_model("resnet18", 10).state_dict(), checkpoint)  # as a trial's best_state_dict
    record = {"study_name": spec.study.name, "trial_number": 0, "metric": "val_accuracy", "value": 0.25,
              "params": {"lr": 0.01, "batch_size": 128}, "checkpoint_local": str(checkpoint)}
    out = workdir / default_export_dir(spec.study.name)
    out.mkdir(parents=True)
    _write_files(spec, record, out, DEFAULT_TRACKING_URI)
    return record["value"]


def test_a_student_learns_from_an_exported_winner(workdir, capsys):
    teacher_space = scaled_down(workdir, "resnet_cifar", 1, model={"name": "resnet18", "weights": "none"})
    student_space = scaled_down(workdir, "distill_cifar", 2, model={"name": "mobilenet_v3_small", "weights": "none"})

    # The teacher's export is not there yet: run refuses before any trial, with one line naming the field.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["run", student_space])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (  # after MLflow's note that it made its database
        "error: task.teacher.export: no export at studies/resnet-cifar10/best: run the teacher's search, then "
        "`hpsearch best --export` writes it there")

    # The ResNet space's export lands where the distillation space looks for its teacher.
    teacher_accuracy = write_teacher_export(workdir, teacher_space)
    result = invoke("run", student_space)
    assert result.exit_code == 0, result.output
    assert "2/2 finished (2 complete" in result.output
    parent, trials = runs_of("distill-cifar10")
    assert parent["teacher"] == "studies/resnet-cifar10/best"
    assert parent["teacher_model"] == "resnet18"
    assert float(parent["teacher_val_accuracy"]) == teacher_accuracy
    assert len(trials) == 2
    for run in trials:
        assert 0.1 <= float(run.data.params["distill_alpha"]) <= 0.9
        assert 1.0 <= float(run.data.params["distill_temperature"]) <= 8.0
        assert run.data.tags["hpsearch.state"] == "COMPLETE"
