"""`hpsearch ui`: the MLflow UI on this folder's tracking store, with links to the last study's runs.

The UI is `mlflow ui` (an `mlflow server`) run as a child process in a process group of its own. It
starts a tree of ~15 processes (uvicorn and its workers, MLflow's job runner); stopping the UI ends
that whole tree, so that nothing keeps the port or the database after hpsearch exits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpsearch.core.credentials import mask_url, redact
from hpsearch.core.errors import RunFailure, UsageError

if TYPE_CHECKING:
    import optuna

# A cold start on two busy cores takes ~10 s; a first start against an old database also migrates it.
START_SECONDS = 120.0
STOP_GRACE_SECONDS = 10.0
COMPARE_TOP = 5
EXIT_INTERRUPTED = 130


@dataclass
class StudyPages:
    """Where the study's runs are in MLflow: its experiment and its best trials' runs, best first."""

    study_name: str
    experiment_id: str | None = None
    top_run_ids: list[str] = field(default_factory=list)

    def links(self, base: str) -> list[tuple[str, str]]:
        """(label, URL) of the pages to open; the UI's own routes (its router is a hash router)."""
        if self.experiment_id is None:
            return [(f"study {self.study_name} (no MLflow experiment yet)", f"{base}/")]
        links = [(f"study {self.study_name} runs", f"{base}/#/experiments/{self.experiment_id}/runs")]
        if len(self.top_run_ids) >= 2:
            # The compare page reads `runs` and `experiments` as JSON lists (it URL-decodes them first);
            # quoting keeps the link whole in terminals that end a link at a double quote.
            runs = urllib.parse.quote(json.dumps(self.top_run_ids, separators=(",", ":")), safe="[],")
            experiments = urllib.parse.quote(json.dumps([self.experiment_id]), safe="[],")
            links.append((f"top {len(self.top_run_ids)} trials compared",
                          f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"))
        return links


def study_pages(study: optuna.Study, tracking_uri: str) -> StudyPages:
    """The study's experiment id and its COMPARE_TOP best completed trials' run ids, read from the stores."""
    import optuna

    from hpsearch.core import record_keys
    from hpsearch.results.export import spec_of_study
    from hpsearch.tracking import mlflow_client

    try:
        experiment = spec_of_study(study).tracking.experiment
    except UsageError:  # a study hpsearch did not make: its experiment, if any, would bear its name
        experiment = study.study_name
    found = mlflow_client.client_for(tracking_uri).get_experiment_by_name(experiment)
    pages = StudyPages(study.study_name, found.experiment_id if found is not None else None)
    ranked = sorted(((t.value, t.user_attrs[record_keys.ATTR_RUN_ID])
                     for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                     if t.value is not None and record_keys.ATTR_RUN_ID in t.user_attrs),
                    key=lambda pair: pair[0], reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    pages.top_run_ids = [run_id for _, run_id in ranked[:COMPARE_TOP]]
    return pages


# ---------------------------------------------------------------- addresses


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _local_host(host: str) -> str:
    """Where this machine reaches a server bound to `host` (a wildcard bind is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is this machine's loopback (only then is the UI private)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_free(host: str, port: int) -> None:
    """Refuse, naming the option, a port that is taken or an address this machine cannot bind."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"--host: cannot resolve {host!r} ({exc.strerror or exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: SO_REUSEADDR, so a port whose old connections linger in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except PermissionError:
            raise UsageError(f"--port: binding port {port} needs privileges; use a port above 1023") from None
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE
                raise UsageError(f"--port: port {port} on {host} is in use; pick another with --port") from None
            raise UsageError(f"--host: cannot bind {host}:{port} ({exc.strerror or exc})") from None


# ---------------------------------------------------------------- the server process tree


def start_server(tracking_uri: str, host: str, port: int, log_path: Path) -> subprocess.Popen:
    # The store goes through the environment, not argv, where `ps` would show its password.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)]
    with open(log_path, "ab") as log:
        # A session of its own: the terminal's Ctrl-C reaches hpsearch only, which then ends the tree.
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (any HTTP status counts: it is up)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def end_tree(proc: subprocess.Popen, hurry: threading.Event | None = None,
             grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the server's whole tree, SIGKILL to what is left after `grace` seconds (at once on `hurry`)."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        # Taken before any signal: a child whose parent exits first is re-parented and leaves the tree.
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _signal_group(proc.pid, signal.SIGTERM)  # and whatever the group holds that was started meanwhile
    alive = _wait_gone(tree, grace, hurry)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    _signal_group(proc.pid, signal.SIGKILL)
    _wait_gone(alive, 5.0)
    proc.wait(5)  # reaps our own child


def _wait_gone(processes: list, seconds: float, hurry: threading.Event | None = None) -> list:
    """Those of `processes` still running after `seconds` (or once `hurry` is set)."""
    import psutil

    def running(p: psutil.Process) -> bool:
        # A zombie has ended: where no init process reaps orphans, it would otherwise count as alive.
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + seconds
    alive = [p for p in processes if running(p)]
    while alive and time.monotonic() < deadline and not (hurry is not None and hurry.is_set()):
        time.sleep(0.1)
        alive = [p for p in alive if running(p)]
    return alive


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _log_reason(log_path: Path) -> str:
    """The line of the server's log that says why it stopped: its last error line, else its last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if "error" in line.lower() and "see the logs above" not in line.lower()]
    return redact((errors or lines or ["no output"])[-1])[:300]


# ---------------------------------------------------------------- the command


class _Stop:
    """SIGINT / SIGTERM noted instead of raised: the main thread ends the server tree, then exits."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.event = threading.Event()  # the first signal
        self.again = threading.Event()  # a second one: stop waiting for a graceful end
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        (self.again if self.event.is_set() else self.event).set()

    def exit_code(self) -> int:
        # Ctrl-C is an interruption (130) like every hpsearch command's; SIGTERM is a service manager's stop.
        return EXIT_INTERRUPTED if self.signals and self.signals[0] == signal.SIGINT else 0


def serve_ui(pages: StudyPages | None, tracking_uri: str, host: str, port: int) -> int:
    """Run the UI until Ctrl-C or SIGTERM; returns the exit code. `pages` None: no study run here yet."""
    from hpsearch.tracking.mlflow_client import prepare_local_store, resolve_uri

    if tracking_uri.startswith(("http://", "https://")):
        return _point_at_server(pages, tracking_uri)
    check_free(host, port)
    if not is_loopback(host):
        click.echo(f"warning: the MLflow UI has no login and {host} is reachable from the network: anyone who "
                   "can reach this port reads and changes every run (MLflow answers only loopback and "
                   "private-network Host names unless MLFLOW_SERVER_ALLOWED_HOSTS lists others)", err=True)
    uri = resolve_uri(tracking_uri)
    prepare_local_store(uri)
    base = f"http://{_url_host(_local_host(host))}:{port}"
    fd, name = tempfile.mkstemp(prefix="hpsearch-ui-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    failed = False
    with _Stop() as stop:
        proc = start_server(uri, host, port, log_path)
        try:
            started = _wait_until_up(proc, f"{base}/health", stop, log_path)
            if started:
                click.echo(f"MLflow UI on {base} (store {mask_url(tracking_uri)}); Ctrl-C stops it")
                _print_links(pages, base)
                while not stop.event.wait(0.5):
                    if proc.poll() is not None:
                        raise RunFailure(f"the MLflow UI exited (code {proc.returncode}): {_log_reason(log_path)} "
                                         f"(its log: {log_path})")
        except BaseException:
            failed = True
            raise
        finally:
            end_tree(proc, hurry=stop.again)
            if not failed:
                log_path.unlink(missing_ok=True)
    click.echo("MLflow UI stopped", err=True)
    return stop.exit_code()


def _wait_until_up(proc: subprocess.Popen, probe: str, stop: _Stop, log_path: Path) -> bool:
    """True once the server answers HTTP; False when stopped meanwhile; RunFailure when it dies or hangs."""
    deadline = time.monotonic() + START_SECONDS
    while not stop.event.is_set():
        if answers(probe):
            return True
        if proc.poll() is not None:
            raise RunFailure(f"the MLflow UI did not start (exit code {proc.returncode}): {_log_reason(log_path)} "
                             f"(its log: {log_path})")
        if time.monotonic() > deadline:
            raise RunFailure(f"the MLflow UI did not answer on {probe} within {START_SECONDS:.0f}s "
                             f"(its log: {log_path})")
        stop.event.wait(0.25)
    return False


def _point_at_server(pages: StudyPages | None, tracking_uri: str) -> int:
    """A tracking server serves its own UI: show where, start nothing."""
    base = (mask_url(tracking_uri) or tracking_uri).rstrip("/")
    click.echo(f"the tracking store is an MLflow server, which serves the UI itself: {base}")
    _print_links(pages, base)
    return 0


def _print_links(pages: StudyPages | None, base: str) -> None:
    for label, url in (pages.links(base) if pages else [("MLflow UI", f"{base}/")]):
        click.echo(f"{label}: {url}")
