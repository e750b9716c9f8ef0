"""`hpsearch report` (the study's HTML page) and `hpsearch ui` (the MLflow UI with the last study's links).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpsearch.cli.options import echo_escaped, study_selector, tracking_option
from hpsearch.core.credentials import redact
from hpsearch.core.errors import RunFailure, UsageError
from hpsearch.results.study_lookup import resolve_study


@click.command()
@study_selector
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Folder for report.html and the PNGs (default: studies/<study>/report/).")
def report(space: str | None, study_name: str | None, storage: str | None, tracking_uri: str | None,
           out_dir: str | None) -> None:
    """The study's plots and trials as one HTML page and PNGs, also attached to its MLflow parent run."""
    from hpsearch.reporting.html_report import default_report_dir
    from hpsearch.reporting.parent_run import publish
    from hpsearch.tracking.probe import check_tracking

    if out_dir and Path(out_dir).exists() and not Path(out_dir).is_dir():  # refused before any work is done
        raise UsageError(f"--out: {out_dir} is a file, not a folder")
    study, storage, uri = resolve_study(space, study_name, storage, tracking_uri)
    check_tracking(uri)
    written, problem = publish(study, uri, Path(out_dir) if out_dir else default_report_dir(study.study_name))
    if problem:  # the page is written all the same
        echo_escaped(f"WARNING: {problem}", err=True)
    click.echo(str(written.page))


@click.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address (0.0.0.0 exposes it to the network: the UI has no login).")
@tracking_option
def ui(port: int, host: str, tracking_uri: str | None) -> None:
    """Start the MLflow UI on this folder's tracking store and print the last study's runs and best trials."""
    from hpsearch.cli.ui import serve_ui, study_pages
    from hpsearch.core.locations import DEFAULT_TRACKING_URI
    from hpsearch.storage import last_run
    from hpsearch.tracking.probe import check_tracking

    pages = None
    if last_run.last_run() is not None:
        try:
            study, _, tracking_uri = resolve_study(None, None, None, tracking_uri)
        except (UsageError, RunFailure) as exc:  # the UI is still worth starting: it shows every study
            click.echo(f"warning: the study last run here cannot be read ({redact(str(exc))}); "
                       "showing the UI's start page", err=True)
        else:
            pages = study_pages(study, tracking_uri)
    check_tracking(tracking_uri or DEFAULT_TRACKING_URI)
    sys.exit(serve_ui(pages, tracking_uri or DEFAULT_TRACKING_URI, host, port))
