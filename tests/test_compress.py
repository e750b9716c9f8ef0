"""`hpsearch compress`: a finished study's winner pruned, fine-tuned and quantized to int8, measured before and
after, logged as a child run of its trial's run, and written beside the trial's export."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from hpsearch.cli.main import cli, main
from hpsearch.core.locations import DEFAULT_TRACKING_URI
from hpsearch.deploy.compression import load_int8
from hpsearch.tracking.mlflow_client import client_for

pytestmark = pytest.mark.slow


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_the_winner_compresses_and_is_measured_after_compression(finished_study):
    best = json.loads(invoke("best", "--study", "finished", "--format", "json").output)
    result = invoke("compress", "--study", "finished", "--prune", "0.5", "--quantize", "int8",
                    "--finetune-epochs", "1", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["trial_number"] == best["trial_number"]
    assert report["model"] == "shufflenet_v2_x0_5"
    before, after = report["before"], report["after"]
    assert before["val_accuracy"] == pytest.approx(best["value"])  # the checkpoint as it trained
    # Half the prunable weights are zero; int8 weights take a quarter of the float bytes, but the file also holds
    # the exported graph (~0.7 MB), which weighs on a 1.5 MB network (ResNet-18's shrinks to 0.26 of its float).
    assert 0.45 < after["params_m"] / before["params_m"] < 0.6
    assert after["size_mb"] < 0.75 * before["size_mb"]
    assert after["latency_ms"] > 0
    assert report["threads"] == 1

    folder = finished_study / "studies" / "finished" / "compressed" / f"trial-{best['trial_number']}"
    assert sorted(p.name for p in folder.iterdir()) == ["best.yaml", "compression.json", "model.pt",
                                                        "model_int8.pt2", "trial.json"]
    assert json.loads((folder / "compression.json").read_text())["after"] == after

    # The file is the model that was measured: read back, it scores what compression.json says.
    from hpsearch.engine.train import evaluate
    from hpsearch.orchestration.builders import load_task_data
    from hpsearch.spec.study_spec import load_spec

    model = load_int8(folder / "model_int8.pt2")
    data = load_task_data(load_spec(folder / "best.yaml"), "cpu")
    assert evaluate(model, data.val, device="cpu")[1] == pytest.approx(after["val_accuracy"])
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    # A child of the trial's run, with the options, the before/after metrics and the file.
    client = client_for(DEFAULT_TRACKING_URI)
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == best["mlflow_run_id"]
    assert run.data.params["prune"] == "0.5"
    assert run.data.params["quantize"] == "int8"
    assert run.data.metrics["val_accuracy"] == pytest.approx(after["val_accuracy"])
    assert run.data.metrics["before_size_mb"] == pytest.approx(before["size_mb"])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "compressed")] == ["compressed/model_int8.pt2"]
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize(("args", "message"), [
    (["--prune", "1.5"], "error: --prune: must be in [0, 1), got 1.5"),
    ([], "error: --prune/--quantize: nothing to do: give --prune AMOUNT (e.g. 0.5), --quantize int8, or both"),
    (["--prune", "0.5", "--finetune-epochs", "-1"], "error: --finetune-epochs: must be >= 0, got -1"),
    (["--prune", "0.5", "--trial", "99"], "error: --trial: study 'finished' has no trial 99 (trials 0 to 3)"),
])
def test_bad_options_are_refused_before_any_work(finished_study, capsys, args, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--study", "finished", *args])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not (finished_study / "studies" / "finished" / "compressed").exists()
