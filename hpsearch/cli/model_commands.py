"""`hpsearch train` (one run of fixed values) and `hpsearch compress` (prune, fine-tune, quantize a trial's model).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import click

from hpsearch.cli.options import print_table, study_selector, tracking_option
from hpsearch.core.errors import UsageError
from hpsearch.results.study_lookup import load_usable_spec, resolve_study


@click.command()
@study_selector
@click.option("--trial", "trial_number", type=click.IntRange(min=0), default=None, metavar="N",
              help="The trial to compress (default: the best; a multi-objective study needs one).")
@click.option("--prune", "prune_amount", type=float, default=0.0, show_default=True, metavar="AMOUNT",
              help="Fraction of the Conv2d/Linear weights to zero (global magnitude pruning), in [0, 1).")
@click.option("--quantize", type=click.Choice(["int8", "none"]), default="none", show_default=True,
              help="int8: post-training quantization for the CPU (calibrated on training images).")
@click.option("--finetune-epochs", type=int, default=2, show_default=True, metavar="E",
              help="Epochs of recovery after pruning, the masks on, at the trial's lr x 0.1.")
@click.option("--device", default="auto", show_default=True, help="Where the fine-tune runs: auto | cpu | cuda.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the trial's export with the compressed model beside model.pt "
                   "(default: studies/<study>/compressed/trial-<N>/).")
@click.option("--force", is_flag=True, help="Replace the files of an --out folder that is not empty.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def compress(space: str | None, study_name: str | None, storage: str | None, tracking_uri: str | None,
             trial_number: int | None, prune_amount: float, quantize: str, finetune_epochs: int, device: str,
             out_dir: str | None, force: bool, fmt: str) -> None:
    """Prune, fine-tune and quantize a trial's model, and measure accuracy, size and latency before and after."""
    from hpsearch.results.compress import CompressOptions
    from hpsearch.results.compress import compress as compress_model
    from hpsearch.results.export import check_export_dir, export_best
    from hpsearch.results.retrain import pick_device
    from hpsearch.results.tables import best_record, trial_record
    from hpsearch.storage.stores import study_dir
    from hpsearch.tracking.probe import check_tracking

    options = CompressOptions(prune_amount, quantize, finetune_epochs, "cpu")
    options.check()  # before the study is opened
    study, storage, uri = resolve_study(space, study_name, storage, tracking_uri)
    check_tracking(uri)
    if trial_number is None and len(study.directions) > 1:
        raise UsageError(f"--trial: study {study.study_name!r} has several objectives and no single winner: "
                         "pick a trial of its Pareto front (`hpsearch best` lists it)")
    record = (best_record(study, storage, uri) if trial_number is None
              else trial_record(study, trial_number, storage, uri))
    default_out = study_dir(study.study_name, "compressed", f"trial-{record['trial_number']}")
    out = Path(out_dir) if out_dir else default_out
    check_export_dir(out, force)
    options = dataclasses.replace(options, device=pick_device(device))
    export_best(study, record, out, uri, force=force)  # best.yaml, model.pt, trial.json: the trial as it trained
    def say(line: str) -> None:
        if fmt != "json":  # the JSON alone on stdout
            click.echo(line)

    result = compress_model(study, record, uri, options, out, on_step=say)
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=str))
        return
    _print_compression(result)


def _print_compression(result: dict) -> None:
    rows = []
    for key, label in (("val_accuracy", "val accuracy"), ("test_accuracy", "test accuracy"),
                       ("latency_ms", f"latency ms (cpu, batch 1, {result['threads']} thread(s))"),
                       ("params_m", "params (M, non-zero)"), ("size_mb", "file (MB)")):
        before, after, ratio = result["before"][key], result["after"][key], result["ratios"][key]
        rows.append({"": label, "before": before, "after": after, "after/before": ratio})
    steps = [f"pruned {result['prune']:.0%}" if result["prune"] else None,
             f"fine-tuned {result['finetune_epochs']} epoch(s)" if result["finetune_epochs"] else None,
             "int8" if result["quantize"] == "int8" else None]
    print_table(result["study_name"], rows, heading=f"study {result['study_name']}, trial {result['trial_number']} "
                 f"({result['model']}): {', '.join(s for s in steps if s)}")
    click.echo(f"written: {', '.join(result['written'])} (beside the trial's best.yaml and model.pt)")
    if result.get("mlflow_run_id"):
        click.echo(f"mlflow run {result['mlflow_run_id']} (a child of trial {result['trial_number']}'s run)")


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Where best.pt and final.pt go (default: studies/<study>/train/).")
@tracking_option
def train(config: str, device: str, output: str | None, tracking_uri: str | None) -> None:
    """One fine-tuning run of the fixed values in CONFIG (e.g. an exported best.yaml), then its test accuracy."""
    from hpsearch.results.retrain import pick_device, train_config
    from hpsearch.storage.stores import study_dir
    from hpsearch.tracking.probe import check_tracking

    spec = load_usable_spec(config, tracking_uri=tracking_uri)
    check_tracking(spec.tracking.uri)
    out = Path(output) if output else study_dir(spec.study.name, "train")

    def show(m: dict) -> None:
        click.echo(
            f"epoch {m['epoch']}/{m['epochs']}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_accuracy {m['val_accuracy']:.4f}  {m['images_per_second']:,.0f} img/s"
        )

    result = train_config(spec, pick_device(device), out, on_epoch=show)
    click.echo(f"best epoch {result.best_epoch}: {spec.study.metric} {result.best_value:.4f}")
    if math.isnan(result.test_accuracy):
        click.echo("test accuracy -: no test split held out (task.data.test_fraction: 0)")
    else:
        click.echo(f"test accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f})")
    click.echo(f"weights: {result.best_path} (best), {result.final_path} (final); mlflow run {result.run_id}")
