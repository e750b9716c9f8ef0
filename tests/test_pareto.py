"""A multi-objective study over backbones, end to end: spaces/mnv2_cifar_pareto.yaml scaled down to digits.

Accuracy against measured latency, with the backbone and the input size searched: every trial measures its
model's cost and logs it, `status` marks the Pareto front, `best` prints it (and its JSON), the parent run names
its runs, the report draws it, and one chosen point exports as a winner does.
"""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from hpsearch.cli.main import cli, main
from hpsearch.core.locations import DEFAULT_TRACKING_URI
from hpsearch.spec.study_spec import load_spec
from hpsearch.tracking.mlflow_client import client_for

from .support import REPO

pytestmark = pytest.mark.slow

STUDY = "mnv2-cifar10-pareto"
BACKBONES = ["mobilenet_v3_small", "shufflenet_v2_x0_5"]


def scaled_down(workdir) -> str:
    """The shipped space on digits: two small backbones at 16 or 24 px, 5 one-epoch trials, NSGA-II with a
    population of 2 (so that later trials are bred from earlier ones), on one CPU slot; pruning after training
    (0 or 50%) searched too."""
    data = yaml.safe_load((REPO / "spaces" / "mnv2_cifar_pareto.yaml").read_text())
    data["study"].update(n_trials=5, sampler={"name": "nsgaii", "seed": 0, "population_size": 2})
    data["study"].pop("timeout")
    data["task"].update(model={"name": "mobilenet_v3_small", "weights": "none"},
                        data={"name": "digits", "image_size": 16, "val_fraction": 0.2, "augment": "none"})
    data["train"]["epochs"] = 1
    space = data["search_space"]
    del space["epochs"]
    del space["quantize"]  # 10-45 s a trial on a CPU core: tests/test_trial_costs.py measures an int8 trial
    space.update(model={"type": "categorical", "choices": BACKBONES},
                 image_size={"type": "categorical", "choices": [16, 24]},
                 batch_size={"type": "categorical", "choices": [128, 256]},
                 prune_amount={"type": "categorical", "choices": [0.0, 0.5]})
    data["resources"] = {"devices": "cpu", "trials_per_device": 1}
    path = workdir / "pareto.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_a_multi_objective_search_over_backbones(workdir, capsys):
    space = scaled_down(workdir)
    assert load_spec(REPO / "spaces" / "mnv2_cifar_pareto.yaml").study.multi  # the shipped file validates

    result = invoke("run", space)
    assert result.exit_code == 0, result.output
    assert "5/5 finished (5 complete" in result.output
    assert "Pareto front: trial(s) " in result.output

    # Every trial measured what its best epoch's model costs, and trained the backbone and size it drew.
    client = client_for(DEFAULT_TRACKING_URI)
    experiment = client.get_experiment_by_name(STUDY).experiment_id
    runs = client.search_runs([experiment])
    trials = {int(r.data.tags["optuna.trial_number"]): r for r in runs if r.data.tags.get("hpsearch.role") == "trial"}
    assert len(trials) == 5
    status = {r["number"]: r for r in json.loads(invoke("status", space, "--format", "json").output)}
    for number, run in trials.items():
        assert run.data.params["model"] in BACKBONES
        assert run.data.params["image_size"] in ("16", "24")
        assert run.data.metrics["latency_ms"] > 0
        assert run.data.metrics["size_mb"] > 0.1
        assert 0.1 < run.data.metrics["params_m"] < 3
        # A pruned trial's objectives are measured on the pruned model: half its weights, its own accuracy.
        full_size = {"mobilenet_v3_small": 1.5, "shufflenet_v2_x0_5": 0.35}[run.data.params["model"]]
        if run.data.params["prune_amount"] == "0.5":
            assert run.data.metrics["params_m"] < 0.7 * full_size
            assert status[number]["values"]["val_accuracy"] == run.data.metrics["compressed_val_accuracy"]
        else:
            assert run.data.metrics["params_m"] > 0.9 * full_size
            assert "compressed_val_accuracy" not in run.data.metrics

    front = json.loads(invoke("best", space, "--format", "json").output)
    assert front["study_name"] == STUDY
    assert front["tracking_uri"] == DEFAULT_TRACKING_URI
    assert front["objectives"] == [{"metric": "val_accuracy", "direction": "maximize"},
                                   {"metric": "latency_ms", "direction": "minimize"}]
    points = front["pareto"]
    assert points
    for point in points:  # the study's values are the runs' metrics
        run = trials[point["number"]]
        assert point["mlflow_run_id"] == run.info.run_id
        assert point["values"]["latency_ms"] == pytest.approx(run.data.metrics["latency_ms"])
        assert point["params"]["model"] == run.data.params["model"]
    # No point of the front is beaten in both objectives by another trial.
    values = [(t["values"]["val_accuracy"], t["values"]["latency_ms"]) for t in
              (json.loads(invoke("status", space, "--format", "json").output))]
    for point in points:
        acc, latency = point["values"]["val_accuracy"], point["values"]["latency_ms"]
        assert not any(a >= acc and lat <= latency and (a, lat) != (acc, latency) for a, lat in values)

    rows = json.loads(invoke("status", space, "--format", "json").output)
    assert {r["number"] for r in rows if r["pareto"]} == {p["number"] for p in points}
    assert "*" in invoke("status", space).output

    table = invoke("best", space).output
    assert "Pareto front" in table
    assert "latency_ms" in table

    parent = next(r for r in runs if r.data.tags.get("hpsearch.role") == "study")
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["hpsearch.pareto_run_ids"].split(",") == [p["mlflow_run_id"] for p in points]
    assert parent.data.params["objectives"] == "val_accuracy:maximize,latency_ms:minimize"
    assert (workdir / "studies" / STUDY / "report" / "pareto.png").is_file()

    # There is no single winner to export; one chosen point exports as a winner does.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["best", space, "--export"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --export: study {STUDY!r} has several objectives and no single winner: pick a trial of its Pareto "
        "front with --trial N")
    chosen = points[-1]
    exported = invoke("best", space, "--trial", str(chosen["number"]), "--export", "chosen")
    assert exported.exit_code == 0, exported.output
    winner = load_spec(workdir / "chosen" / "best.yaml")
    assert winner.task.model.name == chosen["params"]["model"]
    assert winner.task.data.image_size == chosen["params"]["image_size"]
    assert winner.search_space == {}
    assert (workdir / "chosen" / "model.pt").is_file()
