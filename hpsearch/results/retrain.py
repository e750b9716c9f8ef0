"""Single runs outside a search: `hpsearch train CONFIG` and the test-set evaluation of a checkpoint.

The test split is touched only here: the search tunes on the validation split carved from the
training data, and the winner is reported on the test set once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.core import record_keys
from hpsearch.core.errors import UsageError
from hpsearch.core.record_keys import Ended
from hpsearch.core.seeding import trial_seed
from hpsearch.orchestration.builders import build_trainer, hparams_for, load_task_data, run_params
from hpsearch.results.winner_weights import checkpoint_file, has_checkpoint, load_weights, trial_model
from hpsearch.spec.spec_types import Spec
from hpsearch.spec.study_spec import with_task_choices
from hpsearch.tracking import study_runs

if TYPE_CHECKING:
    import optuna

    from hpsearch.engine.train import EpochStats


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device: {requested} requested but no CUDA device is visible")
    return requested


@dataclass
class TrainResult:
    run_id: str
    best_epoch: int | None
    best_value: float | None
    test_loss: float
    test_accuracy: float
    best_path: Path
    final_path: Path
    seconds: float


def train_config(spec: Spec, device: str, out_dir: Path, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train the fixed hyperparameters of `spec` once, log it like a trial, report test accuracy."""
    import torch

    from hpsearch.engine.train import evaluate

    if spec.search_space:
        names = ", ".join(spec.search_space)
        raise UsageError(
            f"search_space: train takes fixed values, this file searches {names}; "
            "export a winner with `hpsearch best --export` and train its best.yaml"
        )
    started = time.perf_counter()
    hp = hparams_for(spec, {})
    study_tracker = study_runs.StudyTracker(spec.tracking.uri, spec.tracking.experiment)
    run = study_runs.TrialRun.start(
        study_tracker.client,
        study_tracker.experiment_id,
        None,
        spec.study.name,
        -1,
        run_params(spec, hp),
        run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
        extra_tags={record_keys.TAG_ROLE: "train"},
    )
    trainer = None
    try:
        trainer, data = build_trainer(spec, hp, device, trial_seed(spec.study.seed, 0))

        def log(stats: EpochStats) -> None:
            run.log_epoch(stats.epoch, stats.as_dict())
            if on_epoch:
                on_epoch(stats.as_dict() | {"epoch": stats.epoch, "epochs": hp.epochs})

        trainer.fit(log)
        out_dir.mkdir(parents=True, exist_ok=True)
        final_state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        best_state = trainer.best_state_dict_cpu() or final_state
        best_path, final_path = out_dir / "best.pt", out_dir / "final.pt"
        torch.save(best_state, best_path)
        torch.save(final_state, final_path)
        run.log_checkpoint(best_state)
        run.log_checkpoint(final_state, name="final.pt")

        trainer.model.load_state_dict(best_state)
        test_loss, test_acc = evaluate(trainer.model, data.test, device=device, settings=trainer.settings)
        if len(data.test):  # none held out (test_fraction: 0): no test metrics rather than nan ones
            run.log_metrics({"test_accuracy": test_acc, "test_loss": test_loss})
        run.finish(Ended.COMPLETE)
        return TrainResult(
            run.run_id, trainer.best_epoch, trainer.best_value, test_loss, test_acc, best_path, final_path,
            time.perf_counter() - started,
        )
    except BaseException as exc:
        killed = isinstance(exc, KeyboardInterrupt)
        run.finish(Ended.FAIL, f"{type(exc).__name__}: {exc}", status="KILLED" if killed else None)
        raise
    finally:
        if trainer is not None:
            trainer.release()


def evaluate_checkpoint(spec: Spec, params: dict[str, Any], checkpoint: Path, device: str) -> tuple[float, float]:
    """(test_loss, test_accuracy) of a saved state_dict for the model the winning params describe."""
    from hpsearch.engine.train import TrainSettings, evaluate

    model = trial_model(spec, params, load_weights(checkpoint)).to(device)
    task_data = load_task_data(with_task_choices(spec, params), device)
    return evaluate(model, task_data.test, device=device, settings=TrainSettings(**spec.settings))


def evaluate_best(study: optuna.Study, record: dict[str, Any], device: str, uri: str) -> dict[str, Any]:
    from hpsearch.results.export import spec_of_study

    spec = spec_of_study(study)
    if spec.task.data.held_out_test == 0 and has_checkpoint(record):
        raise UsageError(f"--evaluate: study {study.study_name!r} held out no test split "
                         "(task.data.test_fraction: 0); rerun with a test_fraction above 0 to measure one")
    with checkpoint_file(record, uri, "--evaluate") as path:
        loss, acc = evaluate_checkpoint(spec, record["params"], path, pick_device(device))
    return {"test_accuracy": acc, "test_loss": loss}
