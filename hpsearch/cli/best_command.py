"""`hpsearch best`: the winner (or a multi-objective study's Pareto front), and handing it back: --export,
--evaluate, --register.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpsearch.cli.options import echo_escaped, print_table, study_selector
from hpsearch.core.errors import UsageError
from hpsearch.results.study_lookup import resolve_study


@click.command()
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
def best(space: str | None, study_name: str | None, storage: str | None, tracking_uri: str | None, fmt: str,
         export_dir: str | None, force: bool, evaluate: bool, device: str, register_name: str | None,
         trial_number: int | None) -> None:
    """The best trial (value, params, trial number, MLflow run id, checkpoint), or a multi-objective study's
    Pareto front."""
    from hpsearch.results.tables import best_record, pareto_record, trial_record
    from hpsearch.tracking.probe import check_tracking

    study, storage, uri = resolve_study(space, study_name, storage, tracking_uri)
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
        from hpsearch.results.retrain import evaluate_best  # torch: only --evaluate pays it

        record.update(evaluate_best(study, record, device, uri))
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
    _print_best(record, is_winner=trial_number is None, evaluated=evaluate)


def _print_best(record: dict, is_winner: bool, evaluated: bool) -> None:
    """One trial's record as aligned text: value(s), params, run, checkpoint and what was done with it."""
    echo_escaped(f"study        {record['study_name']}  ({record['finished_trials']} finished trials)")
    echo_escaped(f"{'best trial' if is_winner else 'trial':<12} {record['trial_number']}")
    for metric, value in (record.get("values") or {record["metric"] or "value": record["value"]}).items():
        echo_escaped(f"{metric:<12} {value:.6g}")
    for k, v in record["params"].items():
        echo_escaped(f"  {k:<14} {v:.6g}" if isinstance(v, float) else f"  {k:<14} {v}")
    echo_escaped(f"mlflow run   {record['mlflow_run_id']}")
    echo_escaped(f"checkpoint   {record['checkpoint'] or record['checkpoint_local'] or '-'}")
    if record.get("checkpoint_note"):
        echo_escaped(f"             ({record['checkpoint_note']})")
    if evaluated:
        echo_escaped(f"test         accuracy {record['test_accuracy']:.4f}, loss {record['test_loss']:.4f}")
    if "exported" in record:
        echo_escaped("exported     " + ", ".join(record["exported"].values()))
    if "registered" in record:
        registered = record["registered"]
        echo_escaped(f"registered   {registered['model_uri']}  (model {registered['name']!r}, "
                     f"version {registered['version']})")


def _print_front(record: dict, fmt: str) -> None:
    """A multi-objective study's Pareto front: one row per trial, its values then its params."""
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, default=str))
        return
    goals = ", ".join(f"{o['metric']} ({o['direction']})" for o in record["objectives"])
    echo_escaped(f"study        {record['study_name']}  ({record['finished_trials']} finished trials)")
    echo_escaped(f"objectives   {goals}")
    names = list(dict.fromkeys(k for p in record["pareto"] for k in p["params"]))  # conditional ones too
    rows = [{"number": p["number"], **p["values"], **{f"params.{k}": p["params"].get(k) for k in names}}
            for p in record["pareto"]]
    print_table(f"{record['study_name']} Pareto front", rows)
    click.echo("Hand back one point with `hpsearch best --trial N --export`; make it smaller with "
               "`hpsearch compress --trial N --prune 0.5 --quantize int8`.")
