"""`hpsearch soup` on a real fine-tuning study of digits (trials fine-tuned from one weights file the test saves),
and every refusal in one line."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.core import record_keys as keys
from hpsearch.core.locations import DEFAULT_STORAGE
from hpsearch.storage.stores import open_storage

from .support import TINY_SPACE, merge, run_cli

FINETUNE = {
    "study": {"name": "ft", "n_trials": 4, "sampler": {"name": "random", "seed": 3}},
    "task": {"model": {"name": "resnet18", "weights": "start.pt"},
             "data": {"name": "digits", "image_size": 16, "val_fraction": 0.2, "augment": "none"}},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9, "scheduler": "cosine"},
    "search_space": {"lr": {"type": "float", "low": 1.0e-2, "high": 3.0e-2, "log": True}},
    "tracking": {"checkpoints": "complete"},
}


def save_start(workdir) -> None:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), workdir / "start.pt")


@pytest.mark.slow
def test_a_greedy_soup_of_a_fine_tuning_study_is_measured_exported_and_logged(write_space, workdir):
    save_start(workdir)
    space = write_space(merge(FINETUNE, {"study": {"name": "ft"}}), name="ft.yaml")
    assert run_cli("run", str(space), cwd=workdir).returncode == 0
    study = optuna.load_study(study_name="ft", storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    starts = {t.user_attrs[keys.ATTR_START_WEIGHTS] for t in study.trials}
    assert len(starts) == 1
    assert next(iter(starts)).startswith("sha256:")  # the file's bytes, recorded per trial

    result = run_cli("soup", "ft.yaml", "--method", "uniform", "--format", "json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["soup"]["ingredients"] == [f"trial {t.number}" for t in
                                             sorted(study.trials, key=lambda t: -t.value)]
    assert record["soup"]["batchnorm_images"] > 0  # averaged: its statistics measured again
    best = max(study.trials, key=lambda t: t.value)
    assert record["best_single"]["val_accuracy"] == pytest.approx(best.value)  # the best model as the search saw it
    soup_weights = torch.load(workdir / "studies/ft/soup/model.pt", weights_only=True)
    assert soup_weights["fc.weight"].shape[0] == 10

    result = run_cli("soup", "ft.yaml", "--force", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "best single (trial" in result.stdout
    greedy = json.loads((workdir / "studies/ft/soup/trial.json").read_text())
    assert greedy["soup"]["ingredients"][0] == f"trial {best.number}"  # the best first, always kept
    assert greedy["val_accuracy"] >= best.value - 1e-9  # greedy never ends below its best ingredient
    assert {p.name for p in (workdir / "studies/ft/soup").iterdir()} >= {"best.yaml", "model.pt", "trial.json"}
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    run = client.get_run(greedy["mlflow_run_id"])
    assert run.data.tags[keys.TAG_ROLE] == "soup"
    assert json.loads(run.data.tags[keys.TAG_SOUP_INGREDIENTS]) == greedy["soup"]["ingredients"]
    assert run.data.metrics["val_accuracy"] == pytest.approx(greedy["val_accuracy"])


def fake_study(workdir, starts: list[str | None], override: dict | None = None, params: list[dict] | None = None):
    """A finished study as hpsearch records it, its trials told by hand (no training): for the refusals."""
    from hpsearch.search.samplers import build_pruner, study_sampler
    from hpsearch.spec.study_spec import parse_spec
    from hpsearch.storage import stores

    spec = parse_spec(merge(merge(TINY_SPACE, FINETUNE), override or {}), source="ft.yaml")
    study, _ = stores.create_or_resume(spec, study_sampler(spec.study.sampler, spec.search_space, 3),
                                       build_pruner(spec.study.pruner), str(workdir / DEFAULT_STORAGE))
    for i, start in enumerate(starts):
        attrs = {} if start is None else {keys.ATTR_START_WEIGHTS: start}
        trial_params = (params or [{}] * len(starts))[i] | {"lr": 0.01 + i * 0.001}
        study.add_trial(create_trial(params=trial_params, distributions={
            k: (FloatDistribution(1e-2, 3e-2, log=True) if k == "lr" else
                optuna.distributions.CategoricalDistribution([16, 32])) for k in trial_params},
            value=0.9 - i * 0.01, user_attrs=attrs, state=TrialState.COMPLETE))


@pytest.mark.parametrize(("starts", "override", "params", "says"), [
    (["none", "none"], {"task": {"model": {"weights": "none"}}}, None,
     "error: soup: trial 0 was trained from scratch (weights none): each such trial starts from its own random "
     "weights, so their average is meaningless"),
    (["sha256:aaaa", "sha256:bbbb"], None, None,
     "error: soup: trial 1 started from sha256:bbbb, trial 0 from sha256:aaaa: only models fine-tuned from the "
     "same weights average into one"),
    (["sha256:aaaa", "sha256:aaaa"], {"search_space": {"image_size": {"type": "categorical", "choices": [16, 32]}}},
     [{"image_size": 16}, {"image_size": 32}],
     "error: soup: trial 1 has image_size=32, trial 0 image_size=16: the ingredients must share their image_size"),
    (["sha256:aaaa", "sha256:aaaa"], None, None, "error: soup: trial 0 has no stored checkpoint"),
    (["sha256:aaaa"], None, None, "error: --top: a soup needs at least 2 ingredients, the study has 1 to offer"),
])
def test_what_cannot_be_averaged_is_refused_in_one_line(workdir, starts, override, params, says):
    save_start(workdir)
    fake_study(workdir, starts, override, params)
    result = run_cli("soup", "--study", "ft", cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(says), lines
    assert not (workdir / "studies" / "ft" / "soup").exists()  # nothing written
