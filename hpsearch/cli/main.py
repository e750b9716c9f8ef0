"""The `hpsearch` command line: one click group, thin commands, domain errors as one clean line.

Exit codes: 0 success; 2 bad input (file, field, option, unknown study); 1 a runtime failure;
130 interrupted (finished trials are kept: run the same command again to resume).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
from pathlib import Path

import click

from hpsearch.core.credentials import STORAGE_ENV, TRACKING_ENV, redact, usable_url
from hpsearch.core.errors import RunFailure, UsageError
from hpsearch.core.terminal import escaped
from hpsearch.spec.redaction import masked_spec

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _spec_error_type():
    from hpsearch.spec.study_spec import SpecError

    return SpecError


# ---------------------------------------------------------------- shared options


def tracking_option(f):
    # option > environment > file: click reads the variable when the option is absent.
    return click.option("--tracking-uri", default=None, envvar=TRACKING_ENV, show_envvar=True,
                        help="MLflow tracking URI (default: the file's, else sqlite:///mlruns/mlflow.db).")(f)


def storage_options(f):
    f = tracking_option(f)
    f = click.option("--storage", default=None, envvar=STORAGE_ENV, show_envvar=True,
                     help="Optuna storage URL or journal file (default: the file's, else studies/journal.log).")(f)
    return f


def study_selector(f):
    f = click.option("--study", "study_name", default=None, help="Study name (instead of SPACE).")(f)
    f = click.argument("space", required=False, type=click.Path(dir_okay=False))(f)
    return storage_options(f)


def _load_spec(path: str, **overrides):
    from hpsearch.spec.study_spec import apply_overrides, load_spec

    spec = load_spec(path)
    # A file hpsearch wrote (an exported best.yaml) carries masked URLs: make them usable again.
    stored = (("storage", spec.study.storage, STORAGE_ENV), ("tracking_uri", spec.tracking.uri, TRACKING_ENV))
    for key, value, env in stored:
        if overrides.get(key) is None and value != usable_url(value, env):
            overrides[key] = usable_url(value, env)
    if any(v is not None for v in overrides.values()):
        spec = apply_overrides(spec, **overrides)
    return spec


def _resolve_study(space, study_name, storage, tracking_uri):
    """(study, storage_url, tracking_uri) from SPACE, --study, or the study last run from this folder."""
    from hpsearch.core.checks import study_name as check_study_name
    from hpsearch.core.locations import LAST_RUN_FILE
    from hpsearch.core.record_keys import STUDY_TRACKING_URI
    from hpsearch.storage import last_run, stores
    from hpsearch.tracking.mlflow_client import DEFAULT_TRACKING_URI

    if space and study_name:
        raise UsageError("--study: give either SPACE or --study, not both")
    if space:
        spec = _load_spec(space, storage=storage, tracking_uri=tracking_uri)
        name, storage, uri = spec.study.name, spec.study.storage, spec.tracking.uri
    elif study_name:
        # A shared storage holds studies made by plain Optuna too: their names obey the space file's rule,
        # since each names a folder under studies/.
        name, uri = check_study_name(study_name, "--study"), tracking_uri
        last = last_run.last_run()
        if storage is None and last and last.study_name == study_name:
            storage = usable_url(last.storage, STORAGE_ENV, _file_urls(last.space_file)[0])
    else:
        last = last_run.last_run()
        if last is None:
            raise UsageError("SPACE: no study has been run from this folder yet; give SPACE or --study NAME")
        # .last_run.json keeps masked URLs; the real ones come back from the options, the environment,
        # or the space file that run read.
        name = check_study_name(last.study_name, f"{LAST_RUN_FILE} study_name")
        file_storage, file_uri = _file_urls(last.space_file)
        storage = storage or usable_url(last.storage, STORAGE_ENV, file_storage)
        uri = tracking_uri or usable_url(last.tracking_uri or None, TRACKING_ENV, file_uri)
    study = stores.load_existing_study(name, storage)
    uri = uri or usable_url(study.user_attrs.get(STUDY_TRACKING_URI), TRACKING_ENV) or DEFAULT_TRACKING_URI
    return study, storage, uri


def _file_urls(space: str | None) -> tuple[str | None, str | None]:
    """(storage, tracking URI) as the space file last run says them, if it is still there and reads."""
    from hpsearch.spec.study_spec import load_spec

    if not space:
        return None, None
    try:
        spec = load_spec(space)
    except Exception:  # a file moved or edited since only means it cannot supply a password
        return None, None
    return spec.study.storage, spec.tracking.uri


# ---------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpsearch")
def cli() -> None:
    """Hyperparameter search for fine-tuning torchvision models: one YAML file, Optuna, MLflow, every GPU."""


@cli.command()
@click.argument("space", type=click.Path(dir_okay=False))
@click.option("--n-trials", type=int, default=None,
              help="Finished trials the study must hold (overrides study.n_trials).")
@click.option("--timeout", default=None,
              help="Stop starting trials after this long: 90s, 30m, 8h (overrides study.timeout).")
@click.option("--devices", default=None, help="auto | cpu | GPU indices like 0,1 (overrides resources.devices).")
@click.option("--trials-per-device", default=None,
              help="Worker processes per device: auto or a number (overrides resources.trials_per_device).")
@click.option("--study-name", default=None, help="Study name (overrides study.name).")
@click.option("--seed", type=int, default=None, help="Sampler seed (overrides study.sampler.seed).")
@storage_options
def run(space, n_trials, timeout, devices, trials_per_device, study_name, seed, storage, tracking_uri):
    """Create or resume the study in SPACE and run its remaining trials."""
    from hpsearch.cli.live import LiveView
    from hpsearch.orchestration.preflight import check_stores
    from hpsearch.orchestration.runner import run_study
    from hpsearch.reporting.parent_run import publish_run_report

    spec = _load_spec(
        space, n_trials=n_trials, timeout=timeout, devices=devices, trials_per_device=trials_per_device,
        study_name=study_name, seed=seed, storage=storage, tracking_uri=tracking_uri,
    )
    check_stores(spec.study.storage, spec.tracking.uri)  # a store never there fails in seconds, not 15 minutes
    summary = run_study(spec, LiveView(spec.study.metric, spec.study.direction, spec.study.n_trials),
                        publish=publish_run_report)
    if summary.interrupted:
        click.echo(
            f"interrupted: {summary.finished} finished trials are kept; run the same command again to resume",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)


@cli.command()
@click.argument("space", type=click.Path(dir_okay=False))
def validate(space):
    """Check SPACE and print the resolved space; trains nothing."""
    import yaml

    spec = _load_spec(space)
    click.echo(f"# {space}: valid")
    click.echo(redact(yaml.safe_dump(masked_spec(spec).to_dict(), sort_keys=False).rstrip()))  # what load_spec learnt
    if spec.study.sampler.name == "tpe" and "n_startup_trials" not in spec.study.sampler.kwargs:
        from hpsearch.search.samplers import tpe_startup_trials

        click.echo(f"# tpe: {tpe_startup_trials(spec.study.n_trials)} random start-up trials of "
                   f"{spec.study.n_trials} (a quarter of n_trials, 5 to 10; set study.sampler.n_startup_trials)")
    if spec.search_space:
        click.echo(f"# searching {len(spec.search_space)} hyperparameter(s):")
        for p in spec.search_space.values():
            click.echo(f"#   {_describe_param(p)}")
    else:
        click.echo("# no search space: every value is fixed (use `hpsearch train`)")


def _describe_param(p) -> str:
    when = ""
    if p.when:
        when = " when " + ", ".join(
            f"{k}={'|'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in p.when.items()
        )
    if p.type == "categorical":
        return f"{p.name}: one of {list(p.choices)}{when}"
    scale = ", log" if p.log else ""
    step = f", step {p.step}" if p.step else ""
    return f"{p.name}: {p.type} in [{p.low}, {p.high}]{scale}{step}{when}"


@cli.command()
@study_selector
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--sort", type=click.Choice(["number", "value"]), default="number", show_default=True,
              help="Row order: trial number, or value (best first in the study's direction; none last).")
@click.option("--top", type=int, default=None, metavar="K", help="Show only the first K rows after sorting.")
def status(space, study_name, storage, tracking_uri, fmt, sort, top):
    """One row per trial: state, value, duration, params."""
    from hpsearch.results.tables import flat_rows, trial_rows

    if top is not None and top < 1:  # before the study is opened
        raise UsageError(f"--top: must be >= 1, got {top}")
    study, storage, uri = _resolve_study(space, study_name, storage, tracking_uri)
    rows = trial_rows(study, sort, top)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    flat = flat_rows(rows)
    if fmt == "csv":
        buf = io.StringIO()
        fields = list(flat[0]) if flat else ["number", "state", "value"]
        writer = csv.DictWriter(buf, fieldnames=[escaped(f) for f in fields])
        writer.writeheader()
        # It lands on a terminal as often as in a file: its text escaped like the table's (JSON keeps it exact).
        writer.writerows({escaped(k): escaped(v) if isinstance(v, str) else v for k, v in r.items()} for r in flat)
        click.echo(buf.getvalue().rstrip("\n"))
        return
    total = len(study.get_trials(deepcopy=False)) if top is not None else None
    _print_table(study.study_name, flat, total)


def _print_table(title: str, flat: list[dict], total: int | None = None, heading: str | None = None) -> None:
    """A rich table of `flat` rows, titled "study TITLE: N trials" (or `heading`)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text objects, never strings: rich reads a string as markup, and a fail reason like "[/x]" crashes it.
    shown = f"{len(flat)} of {total}" if total not in (None, len(flat)) else f"{len(flat)}"
    table = Table(title=Text(escaped(heading or f"study {title}: {shown} trials")), title_justify="left")
    columns = [c for c in (flat[0] if flat else {}) if c not in ("mlflow_run_id",)]
    for c in columns:
        table.add_column(Text(escaped(c.replace("params.", ""))), overflow="fold")
    for r in flat:
        table.add_row(*[Text(("*" if r[c] else "") if c == "pareto" else _cell(r.get(c))) for c in columns])
    Console(width=max(100, min(200, _terminal_width()))).print(table)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return escaped((str(v).splitlines() or [""])[0])[:60]


def _echo(line: str, err: bool = False) -> None:
    """A line that quotes study data, which anyone with access to the storage writes: shown escaped."""
    click.echo(escaped(line), err=err)


@cli.command()
@study_selector
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--export", "export_dir", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="Write best.yaml, model.pt and trial.json (default DIR: studies/<study>/best/).")
@click.option("--force", is_flag=True, help="Let --export replace the files of a folder that is not empty.")
@click.option("--evaluate", is_flag=True, help="Report the best checkpoint's test-set accuracy.")
@click.option("--device", default="auto", show_default=True, help="Device for --evaluate: auto | cpu | cuda.")
@click.option("--register", "register_name", is_flag=False, flag_value="", default=None, metavar="[NAME]",
              help="Log the winner as an MLflow model and register it as a new version of NAME "
                   "(default NAME: the study's name).")
@click.option("--trial", "trial_number", type=click.IntRange(min=0), default=None, metavar="N",
              help="Trial N instead of the winner (any COMPLETE trial: e.g. a point of a Pareto front).")
def best(space, study_name, storage, tracking_uri, fmt, export_dir, force, evaluate, device, register_name,
         trial_number):
    """The best trial (value, params, trial number, MLflow run id, checkpoint), or a multi-objective study's
    Pareto front."""
    from hpsearch.results.tables import best_record, pareto_record, trial_record
    from hpsearch.tracking.probe import check_tracking

    study, storage, uri = _resolve_study(space, study_name, storage, tracking_uri)
    check_tracking(uri, needed=register_name is not None)  # the rest is answered from the study (and local copies)
    if trial_number is None and len(study.directions) > 1:
        wanted = [option for option, value in (("--export", export_dir), ("--evaluate", evaluate or None),
                                               ("--register", register_name)) if value is not None]
        if wanted:
            raise UsageError(f"{wanted[0]}: study {study.study_name!r} has several objectives and no single winner: "
                             "pick a trial of its Pareto front with --trial N")
        _print_front(pareto_record(study, storage, uri), fmt)
        return
    if register_name is not None:
        from hpsearch.results.model_registry import check_model_name

        register_name = register_name or study.study_name
        check_model_name(register_name)  # refuse before any work is done
    # Its URLs are masked: `uri` is the real one.
    record = (best_record(study, storage, uri) if trial_number is None
              else trial_record(study, trial_number, storage, uri))
    out = None
    if export_dir is not None:
        from hpsearch.results.export import check_export_dir, default_export_dir

        out = Path(export_dir) if export_dir else default_export_dir(study.study_name)
        check_export_dir(out, force)  # refuse before any work is done
    if evaluate:
        record.update(_evaluate_best(study, record, device, uri))
    if out is not None:
        from hpsearch.results.export import export_best

        written = export_best(study, record, out, uri, force=force)
        record["exported"] = {k: str(v) for k, v in written.items()}
    if register_name is not None:
        from hpsearch.results.model_registry import register_best

        record["registered"] = register_best(study, record, uri, register_name)
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, default=str))
        return
    _echo(f"study        {record['study_name']}  ({record['finished_trials']} finished trials)")
    _echo(f"{'best trial' if trial_number is None else 'trial':<12} {record['trial_number']}")
    for metric, value in (record.get("values") or {record["metric"] or "value": record["value"]}).items():
        _echo(f"{metric:<12} {value:.6g}")
    for k, v in record["params"].items():
        _echo(f"  {k:<14} {v:.6g}" if isinstance(v, float) else f"  {k:<14} {v}")
    _echo(f"mlflow run   {record['mlflow_run_id']}")
    _echo(f"checkpoint   {record['checkpoint'] or record['checkpoint_local'] or '-'}")
    if record.get("checkpoint_note"):
        _echo(f"             ({record['checkpoint_note']})")
    if evaluate:
        _echo(f"test         accuracy {record['test_accuracy']:.4f}, loss {record['test_loss']:.4f}")
    if "exported" in record:
        _echo("exported     " + ", ".join(record["exported"].values()))
    if "registered" in record:
        registered = record["registered"]
        _echo(f"registered   {registered['model_uri']}  (model {registered['name']!r}, "
              f"version {registered['version']})")


@cli.command()
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
def compress(space, study_name, storage, tracking_uri, trial_number, prune_amount, quantize, finetune_epochs, device,
             out_dir, force, fmt):
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
    study, storage, uri = _resolve_study(space, study_name, storage, tracking_uri)
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
    _print_table(result["study_name"], rows, heading=f"study {result['study_name']}, trial {result['trial_number']} "
                 f"({result['model']}): {', '.join(s for s in steps if s)}")
    click.echo(f"written: {', '.join(result['written'])} (beside the trial's best.yaml and model.pt)")
    if result.get("mlflow_run_id"):
        click.echo(f"mlflow run {result['mlflow_run_id']} (a child of trial {result['trial_number']}'s run)")


def _print_front(record: dict, fmt: str) -> None:
    """A multi-objective study's Pareto front: one row per trial, its values then its params."""
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, default=str))
        return
    goals = ", ".join(f"{o['metric']} ({o['direction']})" for o in record["objectives"])
    _echo(f"study        {record['study_name']}  ({record['finished_trials']} finished trials)")
    _echo(f"objectives   {goals}")
    names = list(dict.fromkeys(k for p in record["pareto"] for k in p["params"]))  # conditional ones too
    rows = [{"number": p["number"], **p["values"], **{f"params.{k}": p["params"].get(k) for k in names}}
            for p in record["pareto"]]
    _print_table(f"{record['study_name']} Pareto front", rows)
    click.echo("Hand back one point with `hpsearch best --trial N --export`; make it smaller with "
               "`hpsearch compress --trial N --prune 0.5 --quantize int8`.")


def _evaluate_best(study, record, device, uri: str) -> dict:
    import tempfile

    from hpsearch.results.export import spec_of_study
    from hpsearch.results.retrain import evaluate_checkpoint, pick_device
    from hpsearch.tracking import checkpoints

    if not record.get("checkpoint") and not record.get("checkpoint_local"):
        raise UsageError(f"--evaluate: {record['checkpoint_note']}")
    spec = spec_of_study(study)
    if spec.task.data.held_out_test == 0:
        raise UsageError(f"--evaluate: study {study.study_name!r} held out no test split "
                         "(task.data.test_fraction: 0); rerun with a test_fraction above 0 to measure one")
    with tempfile.TemporaryDirectory() as tmp:
        path = record["checkpoint_local"] or checkpoints.download_checkpoint(uri, record["mlflow_run_id"], tmp)
        loss, acc = evaluate_checkpoint(spec, record["params"], Path(path), pick_device(device))
    return {"test_accuracy": acc, "test_loss": loss}


@cli.command()
@study_selector
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Folder for report.html and the PNGs (default: studies/<study>/report/).")
def report(space, study_name, storage, tracking_uri, out_dir):
    """The study's plots and trials as one HTML page and PNGs, also attached to its MLflow parent run."""
    from hpsearch.reporting.html_report import default_report_dir
    from hpsearch.reporting.parent_run import publish
    from hpsearch.tracking.probe import check_tracking

    if out_dir and Path(out_dir).exists() and not Path(out_dir).is_dir():  # refused before any work is done
        raise UsageError(f"--out: {out_dir} is a file, not a folder")
    study, storage, uri = _resolve_study(space, study_name, storage, tracking_uri)
    check_tracking(uri)
    written, problem = publish(study, uri, Path(out_dir) if out_dir else default_report_dir(study.study_name))
    if problem:  # the page is written all the same
        _echo(f"WARNING: {problem}", err=True)
    click.echo(str(written.page))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Where best.pt and final.pt go (default: studies/<study>/train/).")
@tracking_option
def train(config, device, output, tracking_uri):
    """One fine-tuning run of the fixed values in CONFIG (e.g. an exported best.yaml), then its test accuracy."""
    from hpsearch.results.retrain import pick_device, train_config
    from hpsearch.storage.stores import study_dir
    from hpsearch.tracking.probe import check_tracking

    spec = _load_spec(config, tracking_uri=tracking_uri)
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


@cli.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address (0.0.0.0 exposes it to the network: the UI has no login).")
@tracking_option
def ui(port, host, tracking_uri):
    """Start the MLflow UI on this folder's tracking store and print the last study's runs and best trials."""
    from hpsearch.cli.ui import serve_ui, study_pages
    from hpsearch.storage import last_run
    from hpsearch.tracking.mlflow_client import DEFAULT_TRACKING_URI
    from hpsearch.tracking.probe import check_tracking

    pages = None
    if last_run.last_run() is not None:
        try:
            study, _, tracking_uri = _resolve_study(None, None, None, tracking_uri)
        except (UsageError, RunFailure) as exc:  # the UI is still worth starting: it shows every study
            click.echo(f"warning: the study last run here cannot be read ({redact(str(exc))}); "
                       "showing the UI's start page", err=True)
        else:
            pages = study_pages(study, tracking_uri)
    check_tracking(tracking_uri or DEFAULT_TRACKING_URI)
    sys.exit(serve_ui(pages, tracking_uri or DEFAULT_TRACKING_URI, host, port))


# ---------------------------------------------------------------- entry point


def _error(message: str) -> None:
    # Errors quote URLs and driver messages: every one is redacted before it is shown.
    # They may quote study data too: control characters are shown escaped, which also keeps them one line.
    click.echo(f"error: {escaped(redact(message))}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every domain error becomes one line on stderr with its exit code, never a traceback."""
    from hpsearch.orchestration.quiet_libraries import quiet_libraries

    quiet_libraries()
    SpecError = _spec_error_type()
    try:
        rv = cli.main(args=argv, prog_name="hpsearch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx else ""
        _error(f"{where}{exc.format_message()}")
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except (SpecError, UsageError) as exc:
        _error(str(exc))
        sys.exit(EXIT_BAD_INPUT)
    except RunFailure as exc:
        _error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug or an environment problem: still one line, the details on request
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"{type(exc).__name__}: {first} (set HPSEARCH_DEBUG=1 for the traceback)")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
