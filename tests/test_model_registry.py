"""`best --register`: the winner as a registered MLflow model that predicts in a process where hpsearch
cannot even be imported, with the same scores as its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from hpsearch.cli.main import main
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD
from hpsearch.orchestration.builders import build_model_for, hparams_for
from hpsearch.spec.study_spec import load_spec
from hpsearch.tracking import checkpoints

from .support import run_cli

DIGITS_CLASSES = 10
IMAGE_SIZE = 32  # the finished study's task.data.image_size

# Loads a registered model in a fresh interpreter in which any import of hpsearch raises.
LOAD_WITHOUT_HPSEARCH = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoHpsearch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hpsearch":
                raise ImportError(f"the registered model imported {name}")
            return None

    sys.meta_path.insert(0, NoHpsearch())
    try:
        import hpsearch
    except ImportError:
        pass
    else:
        raise SystemExit("hpsearch could still be imported")
    import numpy as np
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], model.predict(x))
    batch = model.predict(np.concatenate([x, x, x]))
    assert batch.shape[0] == 3, batch.shape
    assert not [m for m in sys.modules if m.split(".")[0] == "hpsearch"]
    print(json.dumps({"metadata": model.metadata.metadata,
                      "input_shape": list(model.metadata.signature.inputs.inputs[0].shape)}))
""")


def predict_without_hpsearch(cwd, tracking_uri: str, model_uri: str, x: np.ndarray) -> tuple[np.ndarray, dict]:
    np.save(cwd / "x.npy", x)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_HPSEARCH, model_uri, "x.npy", "scores.npy"],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(cwd / "scores.npy"), json.loads(proc.stdout.strip().splitlines()[-1])


def register(cwd, *extra: str, name: str | None = None) -> dict:
    result = run_cli("best", "--register", *([name] if name else []), "--format", "json", *extra, cwd=cwd,
                     timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_register_makes_versions_that_predict_without_hpsearch(finished_study, tmp_path):
    record = register(finished_study)
    assert record["registered"] == {"name": "finished", "version": 1, "model_uri": "models:/finished/1"}

    # The checkpoint's own scores, from the model as the study builds it.
    uri = f"sqlite:///{finished_study}/mlruns/mlflow.db"
    spec = load_spec(finished_study / "finished.yaml")
    model = build_model_for(spec, hparams_for(spec, record["params"]), DIGITS_CLASSES, weights="none")
    model.load_state_dict(torch.load(checkpoints.download_checkpoint(uri, record["mlflow_run_id"], str(tmp_path)),
                                     weights_only=True))
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x).numpy()

    scores, loaded = predict_without_hpsearch(finished_study, uri, "models:/finished/1", x.numpy())
    assert scores.shape == (1, DIGITS_CLASSES)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    assert loaded["input_shape"] == [-1, 3, IMAGE_SIZE, IMAGE_SIZE]
    facts = loaded["metadata"]["hpsearch"]
    assert facts["mean"] == pytest.approx(IMAGENET_MEAN)
    assert facts["std"] == pytest.approx(IMAGENET_STD)
    assert facts["image_size"] == IMAGE_SIZE
    assert facts["class_names"] == [str(i) for i in range(10)]

    version = MlflowClient(uri).get_model_version("finished", "1")
    assert version.run_id == record["mlflow_run_id"]
    assert version.tags["optuna.study_name"] == "finished"
    assert version.tags["optuna.trial_number"] == str(record["trial_number"])
    assert float(version.tags["hpsearch.value"]) == record["value"]

    again = run_cli("best", "--register", cwd=finished_study, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "registered   models:/finished/2  (model 'finished', version 2)" in again.stdout


@pytest.mark.slow
def test_a_name_the_registry_refuses_is_one_line_exit_2(finished_study, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["best", "--register", "team/winner"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --register: model name 'team/winner' contains '/', which MLflow refuses in a name"]


@pytest.mark.slow
def test_register_through_a_tracking_server(finished_study, mlflow_server, tmp_path):
    server = mlflow_server(f"sqlite:///{finished_study}/mlruns/mlflow.db")
    record = register(finished_study, "--tracking-uri", server, name="winner")
    assert record["registered"]["model_uri"] == "models:/winner/1"
    client = MlflowClient(server)
    version = client.get_model_version("winner", "1")
    assert version.run_id == record["mlflow_run_id"]
    assert version.tags["optuna.study_name"] == "finished"
    # Where the server's registry says version 1 is, loaded (loading without hpsearch is the test above).
    local = mlflow.artifacts.download_artifacts(client.get_model_version_download_uri("winner", "1"),
                                                dst_path=str(tmp_path), tracking_uri=server)
    scores = mlflow.pyfunc.load_model(local).predict(np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    assert scores.shape == (1, DIGITS_CLASSES)
