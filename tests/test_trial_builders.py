"""What a trial is built from its spec: the model (bn_momentum reaches every BatchNorm), the teacher (loaded
once per worker), and what its MLflow run records (latency's device and precision, the groups' learning rates).

The spec's side of the trainer: these need optuna, yaml and mlflow, so they live outside tests/trainer_tests
(which run with torch alone).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.core.hparams import HParams
from hpsearch.engine import teacher as teacher_module
from hpsearch.engine.models import build_model
from hpsearch.orchestration import builders
from hpsearch.orchestration.builders import build_model_for, hparams_for
from hpsearch.spec.study_spec import parse_spec

CLASSES = 4


def test_bn_momentum_from_the_spec_reaches_every_batchnorm():
    spec = parse_spec({"study": {"name": "t"}, "task": {"model": {"name": "efficientnet_b0", "weights": "none"},
                                                         "data": {"name": "fake"}},
                       "train": {"bn_momentum": 0.2}})
    model = build_model_for(spec, hparams_for(spec, {}), 10)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)} == {0.2}


def test_a_worker_loads_its_teacher_once_for_two_trials(tmp_path, monkeypatch):
    from hpsearch.spec.study_spec import parse_spec

    torch.save(build_model("mobilenet_v3_small", CLASSES).state_dict(), tmp_path / "teacher.pt")
    data = {"name": "fake", "samples": 40, "num_classes": CLASSES, "image_size": 16, "val_fraction": 0.25}
    spec = parse_spec({
        "study": {"name": "t"},
        "task": {"model": {"name": "mobilenet_v3_small", "weights": "none"}, "data": data,
                 "teacher": {"model": "mobilenet_v3_small", "weights": str(tmp_path / "teacher.pt")}},
    })
    built = []
    build = teacher_module.build_teacher
    monkeypatch.setattr(teacher_module, "build_teacher", lambda *args: built.append(args) or build(*args))
    try:
        first, _ = builders.build_trainer(spec, HParams(epochs=1, distill_alpha=0.2), "cpu", seed=1)
        teacher = first.teacher
        first.release()
        second, _ = builders.build_trainer(spec, HParams(epochs=1, distill_alpha=0.8), "cpu", seed=2)
    finally:
        builders.clear_teacher_cache()
    assert len(built) == 1
    assert teacher is not None
    assert second.teacher is teacher
    assert not teacher.renormalise  # ImageNet's mean/std for both (weights none, a state_dict file)
    assert second.hp.distill_alpha == 0.8
    # The trial's run records distillation's hyperparameters; a study without a teacher does not.
    assert {"distill_alpha", "distill_temperature"} <= set(builders.run_params(spec, second.hp))
    plain = parse_spec({"study": {"name": "t"}, "task": {"model": "mobilenet_v3_small", "data": data}})
    assert not {"distill_alpha", "distill_temperature"} & set(builders.run_params(plain, HParams()))


def test_a_trials_run_records_how_its_latency_is_measured():
    from hpsearch.core.hparams import HParams
    from hpsearch.spec.study_spec import parse_spec

    spec = parse_spec({"study": {"name": "t", "objectives": ["val_accuracy", "latency_ms"]},
                       "task": {"model": "resnet18", "data": "digits"}})
    params = builders.run_params(spec, HParams(), "cuda:0")
    assert params["latency_device"].startswith("cuda:0")  # and the GPU's name, where there is one
    assert params["latency_precision"] == "bf16 autocast, channels_last"
    assert builders.run_params(spec, HParams(), "cpu")["latency_device"] == "cpu, 1 thread"
    assert "latency_device" not in builders.run_params(spec, HParams())


def test_a_trial_run_records_its_group_learning_rates(write_space):
    from hpsearch.orchestration.objective import TrialContext, run_trial
    from hpsearch.search.samplers import build_pruner, build_sampler
    from hpsearch.spec.study_spec import load_spec
    from hpsearch.storage.stores import create_or_resume
    from hpsearch.tracking import background_writer, study_runs

    data = {"name": "fake", "samples": 40, "num_classes": 4, "image_size": 16}
    spec = load_spec(write_space({"task": {"data": data}, "train": {"epochs": 1, "backbone_lr_scale": 0.5}}))
    study, _ = create_or_resume(spec, build_sampler(spec.study.sampler, spec.search_space),
                                build_pruner(spec.study.pruner), None)
    tracker = study_runs.StudyTracker(spec.tracking.uri, spec.tracking.experiment)
    context = TrialContext(spec, study, tracker.client, tracker.experiment_id, tracker.parent_run(spec.study.name, {}))
    outcome = run_trial(context, study.ask()._trial_id)
    background_writer.drain()
    assert outcome.state == "COMPLETE"
    trial = study.trials[0]
    run = tracker.client.get_run(trial.user_attrs["mlflow_run_id"])
    lr = trial.params["lr"]
    assert run.data.metrics["lr.head"] == pytest.approx(lr)
    assert run.data.metrics["lr.backbone"] == pytest.approx(lr / 2)
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "lr.backbone")] == [1]
