"""`best --register`: the winner as an MLflow PyTorch model, registered as a new version in the Model Registry.

The model is saved in MLflow's "pt2" format (torch.export): a traced graph and its weights, which
`mlflow.pyfunc.load_model("models:/NAME/VERSION")` loads with torch alone: no hpsearch, no torchvision,
and no pickle (MLflow 3 refuses to unpickle a model unless told to). It takes what the study trained
on: float32 N×3×H×W, RGB scaled to [0, 1] then normalised with the mean and std recorded beside it
(the MLmodel metadata and extra_files/preprocessing.json), and returns one score per class.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.core import record_keys
from hpsearch.core.errors import RunFailure, UsageError
from hpsearch.results.winner_weights import checkpoint_file, load_weights, trial_model
from hpsearch.tracking import mlflow_client

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from hpsearch.core.data_config import DataConfig
    from hpsearch.spec.spec_types import Spec

MODEL_NAME = "model"  # the logged model's name (its artifact folder)
PREPROCESSING_FILE = "preprocessing.json"
# torch.export fixes every dimension whose example size is 1: an example of one image would make a
# model that takes one image at a time. Two keep the batch dimension free (one image still works).
EXAMPLE_BATCH = 2


def check_model_name(name: str) -> None:
    """Refuse what the Model Registry refuses, before any work is done."""
    if not name.strip():
        raise UsageError("--register: the model name is empty")
    for char in "/:":
        if char in name:
            raise UsageError(f"--register: model name {name!r} contains {char!r}, which MLflow refuses in a name")


def register_best(study: optuna.Study, record: dict[str, Any], tracking_uri: str, name: str) -> dict[str, Any]:
    """Log the best trial's checkpoint as an MLflow model in its trial's run and register it as a new
    version of `name`; returns {"name", "version", "model_uri"}."""
    from hpsearch.results.export import spec_of_study
    from hpsearch.spec.study_spec import with_task_choices

    check_model_name(name)
    spec = with_task_choices(spec_of_study(study), record["params"])  # the winner's backbone and input size
    with checkpoint_file(record, tracking_uri, "--register") as path, tempfile.TemporaryDirectory() as tmp:
        model = winner_model(spec, record["params"], load_weights(path))
        facts = preprocessing(spec, record, _num_classes(model))
        (Path(tmp) / PREPROCESSING_FILE).write_text(json.dumps(facts, indent=2) + "\n")
        version = _log_and_register(model, facts, Path(tmp) / PREPROCESSING_FILE, record, tracking_uri, name)
    return {"name": name, "version": version, "model_uri": f"models:/{name}/{version}"}


def winner_model(spec: Spec, params: dict[str, Any], state: dict[str, Any]) -> nn.Module:
    """The network as the study built it, with the checkpoint's weights, in eval mode, made of torch and
    torchvision modules only."""
    from torch import nn

    from hpsearch.engine.models import DropoutLinear

    model = trial_model(spec, params, state)
    # hpsearch's head with dropout on its input is exactly an nn.Linear in eval mode: swap it for one,
    # so that the saved model names no hpsearch class.
    for dotted, module in list(model.named_modules()):
        if isinstance(module, DropoutLinear):
            plain = nn.Linear(module.in_features, module.out_features)
            plain.load_state_dict(module.state_dict())
            parent, _, attr = dotted.rpartition(".")
            setattr(model.get_submodule(parent), attr, plain)
    foreign = sorted({type(m).__qualname__ for m in model.modules() if type(m).__module__.startswith("hpsearch")})
    if foreign:
        raise RunFailure(f"cannot save the model without hpsearch: it holds {', '.join(foreign)}")
    return model.eval()


def _num_classes(model: nn.Module) -> int:
    from hpsearch.engine.models import head_parameters

    return int(head_parameters(model)[0].shape[0])


def preprocessing(spec: Spec, record: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """What the model expects and what it is: written beside it so that a user feeds it correctly."""
    from hpsearch.engine import models

    mean, std = models.normalization(spec.task.model.name, spec.task.model.weights)
    size = spec.task.data.pixels
    return {
        "input": f"float32 N x 3 x {size} x {size}, RGB",
        "image_size": size,
        "scale": "pixel values / 255, then (x - mean) / std per channel",
        "mean": list(mean),
        "std": list(std),
        "resize": "bilinear to image_size x image_size",
        "output": f"float32 N x {num_classes}: one score (logit) per class",
        "num_classes": num_classes,
        "class_names": class_names(spec.task.data, num_classes),
        "architecture": spec.task.model.name,
        "study": record["study_name"],
        "trial_number": record["trial_number"],
        "metric": record["metric"],
        "value": record["value"],
        "params": record["params"],
    }


def class_names(cfg: DataConfig, num_classes: int) -> list[str] | None:
    """The dataset's class names in label order, read without loading its images; None where unknown."""
    from hpsearch.engine import datasets

    root = Path(cfg.root)
    names: list[str] | None = None
    try:
        if cfg.name in ("digits", "fake"):
            names = [str(i) for i in range(num_classes)]
        elif cfg.name in datasets._CIFAR:  # the names are in the dataset's meta file, read as its reader does
            layout = datasets._CIFAR[cfg.name]
            meta = root / layout["folder"] / layout["meta"]
            if meta.is_file():
                names = [n.decode() for n in datasets._load_pickle(meta)[layout["names_key"]]]
        elif (root / "wnids.txt").is_file():  # Tiny ImageNet
            names = [w.strip() for w in (root / "wnids.txt").read_text().splitlines() if w.strip()]
        elif (root / "train").is_dir():
            names = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    except Exception:  # the data moved or changed since: the model is still worth registering
        return None
    return names if names is not None and len(names) == num_classes else None


def _log_and_register(model: nn.Module, facts: dict[str, Any], facts_file: Path, record: dict[str, Any],
                      tracking_uri: str, name: str) -> int:
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    uri = mlflow_client.resolve_uri(tracking_uri)
    client = mlflow_client.client_for(uri)  # creates or migrates a SQLite store's tables under its lock first
    run_id = record["mlflow_run_id"]
    # The registry lives in the same store; the logged model goes to the study's experiment, beside its run.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    size = facts["image_size"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, facts["num_classes"]))]),
    )
    tags = {record_keys.TAG_STUDY: record["study_name"], record_keys.TAG_TRIAL: str(record["trial_number"]),
            record_keys.MODEL_TAG_METRIC: str(record["metric"]), record_keys.MODEL_TAG_VALUE: repr(record["value"])}
    info = mlflow.pytorch.log_model(
        model,
        name=MODEL_NAME,
        run_id=run_id,  # Model.log: the model is the output of the winner's own run
        registered_model_name=name,
        signature=signature,
        input_example=np.zeros((EXAMPLE_BATCH, 3, size, size), dtype=np.float32),
        serialization_format="pt2",
        metadata={"hpsearch": facts},
        extra_files=[str(facts_file)],
        # Named here: inferring them would load the model again in a subprocess, for the same answer.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        tags=tags,
        # MLflow would load the model again to predict its example, then only warn on a failure: a quarter
        # of the time spent here for nothing hpsearch could act on.
        validate_serving_input=False,
    )
    if info.registered_model_version is None:
        raise RunFailure(f"MLflow logged the model but registered no version of {name!r}")
    return int(info.registered_model_version)
