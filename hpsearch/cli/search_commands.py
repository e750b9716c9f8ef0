"""`hpsearch run`, `validate` and `status`: the search itself, its space, its trials.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import TYPE_CHECKING

import click

from hpsearch.cli.options import EXIT_INTERRUPTED, print_table, storage_options, study_selector
from hpsearch.core.credentials import redact
from hpsearch.core.errors import UsageError

if TYPE_CHECKING:
    from hpsearch.search.space import ParamSpec
    from hpsearch.spec.spec_types import Spec
from hpsearch.core.terminal import escaped
from hpsearch.results.study_lookup import load_usable_spec, resolve_study
from hpsearch.spec.redaction import masked_spec


@click.command()
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
def run(space: str, n_trials: int | None, timeout: str | None, devices: str | None, trials_per_device: str | None,
        study_name: str | None, seed: int | None, storage: str | None, tracking_uri: str | None) -> None:
    """Create or resume the study in SPACE and run its remaining trials."""
    from hpsearch.cli.live import LiveView
    from hpsearch.orchestration.preflight import check_stores
    from hpsearch.orchestration.runner import run_study
    from hpsearch.reporting.parent_run import publish_run_report

    spec = load_usable_spec(
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
    if spec.study.confirm is not None and summary.finished >= spec.study.n_trials and not summary.timed_out:
        _confirm_after_search(spec)


def _confirm_after_search(spec: Spec) -> None:
    """`study.confirm`: the search is done; retrain its best configurations over seeds (`hpsearch confirm`)."""
    from hpsearch.cli.ensemble_commands import show_confirmation
    from hpsearch.cli.live import LiveView
    from hpsearch.results.confirmation import run_confirmation
    from hpsearch.storage.stores import load_existing_study

    wanted = spec.study.confirm
    assert wanted is not None
    study = load_existing_study(spec.study.name, spec.study.storage)
    live = LiveView(spec.study.metric, spec.study.direction, wanted.top * wanted.seeds)
    result, interrupted = run_confirmation(spec, study, wanted.top, wanted.seeds, live)
    if interrupted:
        click.echo(f"interrupted: {result['complete']}/{result['expected']} retrainings are kept; run the same "
                   "command again (or `hpsearch confirm`) to finish the confirmation", err=True)
        sys.exit(EXIT_INTERRUPTED)
    show_confirmation(result, "table")


@click.command()
@click.argument("space", type=click.Path(dir_okay=False))
def validate(space: str) -> None:
    """Check SPACE and print the resolved space; trains nothing."""
    import yaml

    spec = load_usable_spec(space)
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


def _describe_param(p: ParamSpec) -> str:
    when = ""
    if p.when:
        when = " when " + ", ".join(
            f"{k}={'|'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in p.when.items()
        )
    if p.type == "categorical":
        return f"{p.name}: one of {list(p.choices or ())}{when}"
    scale = ", log" if p.log else ""
    step = f", step {p.step}" if p.step else ""
    return f"{p.name}: {p.type} in [{p.low}, {p.high}]{scale}{step}{when}"


@click.command()
@study_selector
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--sort", type=click.Choice(["number", "value"]), default="number", show_default=True,
              help="Row order: trial number, or value (best first in the study's direction; none last).")
@click.option("--top", type=int, default=None, metavar="K", help="Show only the first K rows after sorting.")
def status(space: str | None, study_name: str | None, storage: str | None, tracking_uri: str | None, fmt: str,
           sort: str, top: int | None) -> None:
    """One row per trial: state, value, duration, params."""
    from hpsearch.results.tables import flat_rows, trial_rows

    if top is not None and top < 1:  # before the study is opened
        raise UsageError(f"--top: must be >= 1, got {top}")
    study, storage, _uri = resolve_study(space, study_name, storage, tracking_uri)
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
    print_table(study.study_name, flat, total)
