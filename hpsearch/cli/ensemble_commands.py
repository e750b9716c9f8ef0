"""`hpsearch confirm` (the best configurations retrained over seeds) and `hpsearch soup` (the fine-tuned winners'
weights averaged): what to trust, and what to take home, after a search.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from hpsearch.cli.options import EXIT_INTERRUPTED, print_table, study_selector
from hpsearch.results.study_lookup import resolve_study


def _usable_spec(study, storage: str | None, uri: str):  # type: ignore[no-untyped-def]
    """The study's recorded spec with the stores this command was given (the record masks passwords)."""
    from hpsearch.results.export import spec_of_study

    spec = spec_of_study(study)
    return dataclasses.replace(spec, study=dataclasses.replace(spec.study, storage=storage),
                               tracking=dataclasses.replace(spec.tracking, uri=uri))


@click.command()
@study_selector
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="K",
              help="How many of the best configurations to retrain (default: study.confirm.top, else 3).")
@click.option("--seeds", type=click.IntRange(min=2), default=None, metavar="S",
              help="Training seeds per configuration (default: study.confirm.seeds, else 3).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def confirm(space: str | None, study_name: str | None, storage: str | None, tracking_uri: str | None,
            top: int | None, seeds: int | None, fmt: str) -> None:
    """Retrain the best configurations with fresh seeds and rank them by their mean."""
    from hpsearch.cli.live import LiveView
    from hpsearch.orchestration.preflight import check_stores
    from hpsearch.results import confirmation

    study, storage, uri = resolve_study(space, study_name, storage, tracking_uri)
    spec = _usable_spec(study, storage, uri)
    confirmation.check_confirmable(spec, "confirm")
    check_stores(spec.study.storage, spec.tracking.uri)
    wanted = spec.study.confirm
    top = top or (wanted.top if wanted else 3)
    seeds = seeds or (wanted.seeds if wanted else 3)
    live = LiveView(spec.study.metric, spec.study.direction, top * seeds)
    result, interrupted = confirmation.run_confirmation(spec, study, top, seeds, live)
    if interrupted:
        click.echo(f"interrupted: {result['complete']}/{result['expected']} retrainings are kept; run the same "
                   "command again to finish the confirmation", err=True)
        sys.exit(EXIT_INTERRUPTED)
    show_confirmation(result, fmt)


def show_confirmation(result: dict, fmt: str) -> None:
    from hpsearch.results import confirmation

    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=str))
        return
    rows = [{"rank": i + 1, "trial": r["trial"], f"mean {result['metric']}": confirmation.describe(r),
             "single run": f"{r['single_run_value']:.4f}",
             "seeds": ", ".join("—" if s["value"] is None else f"{s['value']:.4f}" for s in r["seeds"])}
            for i, r in enumerate(result["ranking"])]
    print_table("", rows, heading=f"confirmed over {result['seeds']} seeds: {result['complete']}/"
                                  f"{result['expected']} retrainings complete")
    if result["winner"] is not None:
        click.echo(f"confirmed winner: trial {result['winner']} ({confirmation.describe(result['ranking'][0])})")


@click.command()
@study_selector
@click.option("--top", type=click.IntRange(min=2), default=None, metavar="K",
              help="Average at most the K best finished trials (and confirmation seeds); default: all of them.")
@click.option("--method", type=click.Choice(["greedy", "uniform"]), default="greedy", show_default=True,
              help="greedy: best first, each kept only if the validation score does not drop; uniform: all.")
@click.option("--device", default="auto", show_default=True, help="Where the soup is measured: auto | cpu | cuda.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the soup's export (default: studies/<study>/soup/).")
@click.option("--force", is_flag=True, help="Replace the files of an --out folder that is not empty.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def soup(space: str | None, study_name: str | None, storage: str | None, tracking_uri: str | None,
         top: int | None, method: str, device: str, out_dir: str | None, force: bool, fmt: str) -> None:
    """Average the weights of a fine-tuning search's best models (a model soup) and export it."""
    from pathlib import Path

    from hpsearch.results import soup as soups
    from hpsearch.results.confirmation import confirm_study_name
    from hpsearch.results.export import check_export_dir
    from hpsearch.results.retrain import pick_device
    from hpsearch.storage import stores
    from hpsearch.tracking.probe import check_tracking

    study, storage, uri = resolve_study(space, study_name, storage, tracking_uri)
    spec = _usable_spec(study, storage, uri)
    check_tracking(uri)
    out = Path(out_dir) if out_dir else stores.study_dir(study.study_name, "soup")
    check_export_dir(out, force)
    confirm_name = confirm_study_name(study.study_name)
    confirm = None
    if confirm_name in {s.study_name for s in optuna_summaries(storage)}:
        confirm = stores.load_existing_study(confirm_name, storage)
    found = soups.candidates(study, spec, top, confirm)
    soups.check_ingredients(spec, found)
    result = soups.make_soup(spec, found, method, storage, uri, pick_device(device),
                             lambda line: click.echo(line, err=True))
    record = soups.record_soup(study, spec, result, found, storage, uri, out, force)
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, default=str))
        return
    for line in soups.summary_lines(result):
        click.echo(line)
    click.echo(f"exported to {out}/ (best.yaml, model.pt, trial.json); MLflow run {record['mlflow_run_id']}")


def optuna_summaries(storage: str | None) -> list:
    import optuna

    from hpsearch.storage import stores

    return optuna.get_all_study_summaries(stores.open_storage(storage), include_best_trial=False)
