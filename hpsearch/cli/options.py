"""What the commands share: the store options (option > environment > file), exit codes, tables and escaped lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from hpsearch.core.credentials import STORAGE_ENV, TRACKING_ENV
from hpsearch.core.terminal import escaped

F = TypeVar("F", bound=Callable[..., Any])  # a click command function, before and after its options

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def spec_error_type() -> type[Exception]:
    from hpsearch.spec.study_spec import SpecError

    return SpecError


# ---------------------------------------------------------------- shared options


def tracking_option(f: F) -> F:
    # option > environment > file: click reads the variable when the option is absent.
    return click.option("--tracking-uri", default=None, envvar=TRACKING_ENV, show_envvar=True,
                        help="MLflow tracking URI (default: the file's, else sqlite:///mlruns/mlflow.db).")(f)


def storage_options(f: F) -> F:
    f = tracking_option(f)
    f = click.option("--storage", default=None, envvar=STORAGE_ENV, show_envvar=True,
                     help="Optuna storage URL or journal file (default: the file's, else studies/journal.log).")(f)
    return f


def study_selector(f: F) -> F:
    f = click.option("--study", "study_name", default=None, help="Study name (instead of SPACE).")(f)
    f = click.argument("space", required=False, type=click.Path(dir_okay=False))(f)
    return storage_options(f)


def print_table(title: str, flat: list[dict], total: int | None = None, heading: str | None = None) -> None:
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


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return escaped((str(v).splitlines() or [""])[0])[:60]


def echo_escaped(line: str, err: bool = False) -> None:
    """A line that quotes study data, which anyone with access to the storage writes: shown escaped."""
    click.echo(escaped(line), err=err)
