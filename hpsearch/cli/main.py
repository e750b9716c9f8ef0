"""The `hpsearch` command line: one click group, thin commands, domain errors as one clean line.

Exit codes: 0 success; 2 bad input (file, field, option, unknown study); 1 a runtime failure;
130 interrupted (finished trials are kept: run the same command again to resume).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

import click

from hpsearch.cli import best_command, ensemble_commands, model_commands, report_commands, search_commands
from hpsearch.cli.options import EXIT_BAD_INPUT, EXIT_INTERRUPTED, spec_error_type
from hpsearch.core.credentials import redact
from hpsearch.core.errors import RunFailure, UsageError
from hpsearch.core.terminal import escaped

# ---------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpsearch")
def cli() -> None:
    """Hyperparameter search for fine-tuning torchvision models: one YAML file, Optuna, MLflow, every GPU."""


# ---------------------------------------------------------------- entry point


def _error(message: str) -> None:
    # Errors quote URLs and driver messages: every one is redacted before it is shown.
    # They may quote study data too: control characters are shown escaped, which also keeps them one line.
    click.echo(f"error: {escaped(redact(message))}", err=True)


for command in (search_commands.run, search_commands.validate, search_commands.status, best_command.best,
                model_commands.compress, model_commands.train, report_commands.report, report_commands.ui,
                ensemble_commands.confirm, ensemble_commands.soup):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every domain error becomes one line on stderr with its exit code, never a traceback."""
    code = _run(argv)
    if argv is None:  # the `hpsearch` process itself (console script, python -m), not a caller in-process
        _exit_without_teardown(code)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """The command's exit code."""
    from hpsearch.orchestration.quiet_libraries import quiet_libraries

    quiet_libraries()
    SpecError = spec_error_type()
    try:
        rv = cli.main(args=argv, prog_name="hpsearch", standalone_mode=False)
    except SystemExit as exc:  # a command that exits with its own code (`ui`)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_INTERRUPTED
    except click.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx else ""
        _error(f"{where}{exc.format_message()}")
        return EXIT_BAD_INPUT
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except (SpecError, UsageError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except RunFailure as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an environment problem: still one line, the details on request
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"{type(exc).__name__}: {first} (set HPSEARCH_DEBUG=1 for the traceback)")
        return 1
    return rv if isinstance(rv, int) else 0


def _exit_without_teardown(code: int) -> NoReturn:
    """Exit as Python would, minus tearing down the ~3,500 modules a command imports (MLflow, Optuna,
    SQLAlchemy, pandas, matplotlib): 1.3 s of every command's wall time on a 2-core VM, spent only freeing
    memory. Other threads are waited for and every exit handler still runs (logging, multiprocessing,
    MLflow), then the streams are flushed, as at a normal exit."""
    import atexit
    import threading

    # What the interpreter does first at exit: threading's own exit hooks (which stop thread pools such as
    # MLflow's artifact uploaders), then wait for the other non-daemon threads.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`hpsearch status | head`)
            stream.flush()
    os._exit(code)
