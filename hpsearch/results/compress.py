"""`hpsearch compress`: a study's trial made smaller for deployment, and measured again after compression.

The trial's best checkpoint is rebuilt as it trained (backbone, input size, head), measured (validation and
test accuracy, latency_ms, params_m, size_mb), globally magnitude-pruned (compression.prune_global), fine-tuned
for a few epochs with the masks on so that it recovers, made permanent, quantized to int8 for the CPU
(compression.quantize_int8), and measured again the same way. Latency is CPU latency at batch 1 for both,
whatever device fine-tunes: an int8 model runs on the CPU, and a comparison needs one device.

The result is a child run of the trial's MLflow run (its params, the before/after metrics, the compressed file
as an artifact) and files beside an export's model.pt: the compressed model and compression.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.core import record_keys
from hpsearch.core.errors import RunFailure, UsageError
from hpsearch.core.record_keys import Ended
from hpsearch.results.winner_weights import checkpoint_file, has_checkpoint, load_weights
from hpsearch.tracking import mlflow_client, study_runs

if TYPE_CHECKING:
    from torch import nn

    from hpsearch.engine.data import TaskData
    from hpsearch.spec.spec_types import Spec

REPORT_FILE = "compression.json"
COMPRESSED_FLOAT = "model_compressed.pt"  # a pruned float state_dict (no quantization)
COMPRESSED_INT8 = "model_int8.pt2"  # an int8 exported program (compression.load_int8 reads it)
ARTIFACT_DIR = "compressed"
FINETUNE_LR_SCALE = 0.1  # recovering from pruning wants a gentler step than training from the start did


@dataclass(frozen=True)
class CompressOptions:
    prune: float  # fraction of the Conv2d/Linear weights zeroed, 0 <= x < 1
    quantize: str  # params.QUANTIZE_MODES
    finetune_epochs: int  # after pruning, with the masks on; 0: none
    device: str  # where the fine-tune runs

    def check(self) -> None:
        if not 0 <= self.prune < 1:
            raise UsageError(f"--prune: must be in [0, 1), got {self.prune:g}")
        if self.finetune_epochs < 0:
            raise UsageError(f"--finetune-epochs: must be >= 0, got {self.finetune_epochs}")
        if self.prune == 0 and self.quantize == "none":
            raise UsageError("--prune/--quantize: nothing to do: give --prune AMOUNT (e.g. 0.5), --quantize int8, "
                             "or both")


@dataclass(frozen=True)
class Measured:
    val_accuracy: float
    test_accuracy: float
    latency_ms: float
    params_m: float
    size_mb: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def compress(study: optuna.Study, record: dict[str, Any], tracking_uri: str, options: CompressOptions,
             out_dir: Path | None, on_step: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Compress the trial `record` describes (report.trial_record) and measure it before and after; log it
    as a child run of the trial's run and, with `out_dir`, write the compressed file and compression.json
    there. Returns what compression.json holds."""
    from hpsearch.orchestration.builders import hparams_for, load_task_data, rebuilt_model
    from hpsearch.results.export import spec_of_study
    from hpsearch.spec.study_spec import fixed_spec

    options.check()
    if not has_checkpoint(record):
        raise UsageError(f"compress: {record['checkpoint_note']}")
    started = time.perf_counter()
    spec = fixed_spec(spec_of_study(study), record["params"])  # the trial's backbone, size and hyperparameters
    hp = hparams_for(spec, {})
    data = load_task_data(spec, "cpu")
    with tempfile.TemporaryDirectory(prefix="hpsearch-compress-") as tmp:
        with checkpoint_file(record, tracking_uri, "compress") as path:
            model = rebuilt_model(spec, hp, load_weights(path))
        on_step(f"trial {record['trial_number']}: {spec.task.model.name} at {data.image_size} px, measuring it as "
                "it trained")
        before = _measure(model, data, Path(tmp) / "before.pt")

        model, finetuned = _prune(model, spec, hp, data, options, on_step)
        final: nn.Module = model
        if options.quantize == "int8":
            from hpsearch.deploy.compression import calibration_batches, quantize_int8

            on_step("quantizing to int8 (calibrated on 256 training images)")
            try:
                final = quantize_int8(model, calibration_batches(data.train), data.image_size)
            except ValueError as e:  # an architecture torch.export or torchao cannot take: one line, exit 1
                raise RunFailure(f"compress: {e}") from e
        file_name = COMPRESSED_INT8 if options.quantize == "int8" else COMPRESSED_FLOAT
        compressed_file = Path(tmp) / file_name
        on_step("measuring the compressed model")
        after = _measure(final, data, compressed_file)
        result = {
            "study_name": record["study_name"],
            "trial_number": record["trial_number"],
            "trial_run_id": record["mlflow_run_id"],
            "model": spec.task.model.name,
            "image_size": data.image_size,
            "prune": options.prune,
            "quantize": options.quantize,
            "finetune_epochs": finetuned,
            "latency_device": "cpu",
            "threads": 1,  # latency on one CPU thread (costs.one_thread_on)
            "before": before.as_dict(),
            "after": after.as_dict(),
            "ratios": {k: _ratio(after.as_dict()[k], v) for k, v in before.as_dict().items()},
            "file": file_name,
            "seconds": round(time.perf_counter() - started, 1),
        }
        result["mlflow_run_id"] = _log_child_run(study, record, tracking_uri, options, result, compressed_file)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(compressed_file, out_dir / file_name)
            (out_dir / REPORT_FILE).write_text(json.dumps(result, indent=2) + "\n")
            result["written"] = [str(out_dir / file_name), str(out_dir / REPORT_FILE)]
    return result


def _prune(model: nn.Module, spec: Spec, hp: Any, data: TaskData, options: CompressOptions,
           on_step: Callable[[str], None]) -> tuple[nn.Module, int]:
    """Prune, fine-tune with the masks on (keeping the best epoch by the study's metric), make permanent.
    Returns the model and the epochs it fine-tuned."""
    if options.prune == 0:
        return model, 0
    from hpsearch.deploy.compression import make_permanent, prune_global
    from hpsearch.engine.train import Trainer, TrainSettings

    prune_global(model, options.prune)
    on_step(f"pruned {options.prune:.0%} of the Conv2d/Linear weights (global magnitude)")
    epochs = options.finetune_epochs
    if epochs:
        from hpsearch.orchestration.builders import load_task_data

        tuned = dataclasses.replace(hp, epochs=epochs, lr=hp.lr * FINETUNE_LR_SCALE, warmup_epochs=0,
                                    unfreeze_epoch=None, patience=None)
        on_step(f"fine-tuning {epochs} epoch(s) on {options.device} at lr {tuned.lr:.3g} (the trial's × "
                f"{FINETUNE_LR_SCALE:g}), masks on")
        train_data = data if options.device == "cpu" else load_task_data(spec, options.device)
        # Eager steps: the masks recompute each weight in a forward pre-hook, which a captured graph need not keep.
        settings = TrainSettings(**{**spec.settings, "cuda_graphs": "off"})
        trainer = Trainer(model, train_data, tuned, device=options.device, settings=settings,
                          metric=spec.study.metric, direction=spec.study.direction)
        trainer.fit(lambda stats: on_step(f"  epoch {stats.epoch}: {spec.study.metric} "
                                          f"{getattr(stats, spec.study.metric):.4f}"))
        best = trainer.best_state_dict_cpu()
        model = trainer.model.cpu()
        if best is not None:
            model.load_state_dict(best)
        trainer.release()
    make_permanent(model)
    return model.eval(), epochs


def _measure(model: nn.Module, data: TaskData, file: Path) -> Measured:
    from hpsearch.deploy import costs
    from hpsearch.engine.train import evaluate

    _, val = evaluate(model, data.val, device="cpu")
    _, test = evaluate(model, data.test, device="cpu")
    with costs.one_thread_on("cpu"):
        cost = costs.measure(model, data.image_size, "cpu", file)
    return Measured(val, test, cost.latency_ms, cost.params_m, cost.size_mb)


def _ratio(after: float, before: float) -> float | None:
    return None if not before or math.isnan(before) or math.isnan(after) else round(after / before, 4)


def _log_child_run(study: optuna.Study, record: dict[str, Any], tracking_uri: str, options: CompressOptions,
                   result: dict[str, Any], compressed_file: Path) -> str | None:
    """A child run of the trial's run: the options as params, before_*/after metrics, the file as an artifact."""
    parent = record.get("mlflow_run_id")
    if not parent:
        return None
    client = mlflow_client.client_for(tracking_uri)
    experiment_id = client.get_run(parent).info.experiment_id
    run = study_runs.TrialRun.start(
        client, experiment_id, parent, study.study_name, record["trial_number"],
        {"prune": options.prune, "quantize": options.quantize, "finetune_epochs": result["finetune_epochs"],
         "model": result["model"], "image_size": result["image_size"], "latency_device": "cpu",
         "threads": result["threads"]},
        run_name=f"trial-{record['trial_number']}-compressed", extra_tags={record_keys.TAG_ROLE: "compress"},
    )
    metrics = {**{f"before_{k}": v for k, v in result["before"].items()}, **result["after"]}
    run.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
    client.log_artifact(run.run_id, str(compressed_file), ARTIFACT_DIR)
    run.finish(Ended.COMPLETE)
    return run.run_id
