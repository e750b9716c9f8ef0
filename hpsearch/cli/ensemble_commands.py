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
