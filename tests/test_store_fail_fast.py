"""A store that was never there fails in seconds: one line naming its option, exit 2, no password.

The start-up probe (hpsearch.core.store_contact) against the real PostgreSQL, a private cluster that checks
passwords, a real `mlflow server`, and tiny loopback servers that are not MLflow or never answer.
HPSEARCH_OUTAGE_SECONDS stays at 900 throughout: nothing here may wait for it.

A new bad URL is one more row of CASES.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
import uuid

import optuna
import psycopg
import pytest
import sqlalchemy.exc
import yaml

from hpsearch.core import store_contact
from hpsearch.core.db_errors import connect_args, is_transient
from hpsearch.core.outages import CONNECT_ENV
from hpsearch.orchestration import preflight
from hpsearch.storage.db_outages import DatabaseRefused, OutageProofStorage
from hpsearch.tracking import mlflow_client, probe

from .conftest import PG_ADMIN, MlflowServers
from .pg_cluster import PrivateCluster, missing_reason
from .support import TINY_SPACE, free_port, run_cli

PASSWORD = "s3cret-pw"
DEADLINE = 1.0  # HPSEARCH_CONNECT_TIMEOUT for the rows that must wait it out
SLACK = 4.0  # start-up and scheduling on a busy machine, beyond the deadline
AT_ONCE_SECONDS = 2.0  # a refusal, with a 30 s deadline it must not wait for


# ---------------------------------------------------------------- loopback servers that are not MLflow


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    """/html/…: a web page for every path; /auth/…: 401; /busy/…: 503; anything else: 404."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = next((code for prefix, code in (("/html/", 200), ("/auth/", 401), ("/busy/", 503))
                       if self.path.startswith(prefix)), 404)
        body = b"<html><body>hello</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _Silent:
    """A port that accepts connections (the kernel does) and never says a word: a blackholed server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]


@pytest.fixture(scope="module")
def places():
    """The URL parts the rows name: ports that refuse, never answer, or answer but are not MLflow."""
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMlflow)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = _Silent()
    yield {"closed": free_port(), "silent": silent.port, "web": f"http://127.0.0.1:{web.server_address[1]}",
           "pw": PASSWORD, "db": f"hps_missing_{uuid.uuid4().hex[:8]}"}
    web.shutdown()
    silent.sock.close()


@pytest.fixture(scope="module")
def password_cluster():
    """A private PostgreSQL that checks passwords (the shared one trusts every local connection): its port."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = PrivateCluster()
    try:
        cluster.init()
        (cluster.data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        cluster.start()
        with psycopg.connect(host=str(cluster.root), port=cluster.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE ROLE hps LOGIN PASSWORD 'the-right-one'")
        yield cluster.port
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """What the commands import, imported once (a space file loads torchvision's models): a row measures
    its store, not Python's imports on a busy machine."""
    import importlib

    from hpsearch.spec.study_spec import load_spec

    for name in ("hpsearch.cli.main", "hpsearch.orchestration.runner", "hpsearch.results.retrain", "hpsearch.cli.ui",
                 "hpsearch.reporting.parent_run", "hpsearch.results.compress", "hpsearch.results.tables",
                 "hpsearch.results.export", "mlflow.utils.rest_utils",
                 "mlflow.tracking._tracking_service.utils"):
        importlib.import_module(name)
    space = tmp_path_factory.mktemp("warm") / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    load_spec(str(space))


@pytest.fixture
def project(workdir, monkeypatch, warm):
    """A folder with tiny.yaml, and the outage patience at its default: a row that waits for it fails."""
    monkeypatch.delenv("HPSEARCH_OUTAGE_SECONDS", raising=False)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    return workdir


def _cli(capsys, *argv: str) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of `hpsearch ARGV`, in this process."""
    from hpsearch.cli.main import main

    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    seconds = time.monotonic() - started
    return exit_info.value.code, capsys.readouterr().err, seconds


# ---------------------------------------------------------------- the table

PG = "postgresql://postgres@127.0.0.1:5432"
STATUS = ("status", "--study", "tiny", "--storage")
RUN = ("run", "tiny.yaml", "--tracking-uri")
WAITS = "waits"  # no answer: the one line comes after the connect deadline
REFUSED = "at once"  # a refusal: the one line comes at once, whatever the deadline

# (argv with {places}, the option the line names, what the line says, when it comes)
CASES = [
    # the study storage
    pytest.param((*STATUS, "postgresql://hps:{pw}@127.0.0.1:{closed}/nowhere"), "--storage",
                 "did not answer within 1s (HPSEARCH_CONNECT_TIMEOUT): Connection refused", WAITS, id="pg-closed-port"),
    pytest.param((*STATUS, "postgresql://hps:{pw}@127.0.0.1:{silent}/test"), "--storage",
                 "did not answer within 1s", WAITS, id="pg-never-answers"),
    pytest.param((*STATUS, "postgresql://hps:{pw}@127.0.0.1:{cluster}/postgres"), "--storage",
                 'password authentication failed for user "hps"', REFUSED, id="pg-wrong-password"),
    pytest.param((*STATUS, "postgresql://nosuchuser:{pw}@127.0.0.1:5432/test"), "--storage",
                 'role "nosuchuser" does not exist', REFUSED, id="pg-missing-role"),
    pytest.param((*STATUS, PG + "/{db}"), "--storage", 'database "{db}" does not exist', REFUSED,
                 id="pg-missing-database"),
    pytest.param((*STATUS, "postgresql://hps:{pw}@nonexistent.invalid/test"), "--storage", "unknown host",
                 REFUSED, id="pg-unknown-host"),
    pytest.param((*STATUS, PG + "/test?sslmode=bogus"), "--storage", 'invalid sslmode value: "bogus"', REFUSED,
                 id="pg-bad-sslmode"),
    pytest.param((*STATUS, "sqlite:////nonexist/x.db"), "--storage", "unable to open database file", REFUSED,
                 id="sqlite-missing-folder"),
    pytest.param((*STATUS, "foo://x"), "--storage", "unsupported scheme 'foo'", REFUSED, id="unknown-scheme"),
    pytest.param((*STATUS, "postgresql://hps:{pw}@127.0.0.1:notaport/db"), "--storage", "not a valid URL",
                 REFUSED, id="port-not-a-number"),
    pytest.param((*STATUS, "/proc/version"), "--storage", "cannot be written as a journal file", REFUSED,
                 id="journal-unwritable"),
    pytest.param((*STATUS, "."), "--storage", "not a regular file", REFUSED, id="journal-is-a-folder"),
    pytest.param((*STATUS, "redis://127.0.0.1:{closed}"), "--storage", "redis", REFUSED, id="redis"),
    # the tracking store
    pytest.param((*RUN, "http://hps:{pw}@127.0.0.1:{closed}"), "--tracking-uri",
                 "did not answer within 1s (HPSEARCH_CONNECT_TIMEOUT): connection refused", WAITS,
                 id="http-closed-port"),
    pytest.param((*RUN, "http://127.0.0.1:{silent}"), "--tracking-uri", "did not answer within 1s", WAITS,
                 id="http-never-answers"),
    pytest.param((*RUN, "{web}/busy"), "--tracking-uri", "did not answer within 1s", WAITS, id="http-503"),
    pytest.param((*RUN, "{web}"), "--tracking-uri", "not an MLflow tracking server (HTTP 404", REFUSED,
                 id="http-404-not-mlflow"),
    pytest.param((*RUN, "{web}/html"), "--tracking-uri", "not an MLflow tracking server (HTTP 200", REFUSED,
                 id="http-web-page-not-mlflow"),
    pytest.param((*RUN, "{web}/auth"), "--tracking-uri", "refuses these credentials (HTTP 401", REFUSED,
                 id="http-401"),
    pytest.param((*RUN, "http://hps:{pw}@nonexistent.invalid:5000"), "--tracking-uri", "unknown host", REFUSED,
                 id="http-unknown-host"),
    pytest.param((*RUN, "foo://x"), "--tracking-uri", "unsupported scheme 'foo'", REFUSED,
                 id="tracking-unknown-scheme"),
    pytest.param((*RUN, PG + "/{db}"), "--tracking-uri", 'database "{db}" does not exist', REFUSED,
                 id="tracking-missing-database"),
    # every command probes what it uses, before any work
    pytest.param(("run", "tiny.yaml", "--storage", "postgresql://hps:{pw}@127.0.0.1:{closed}/x"), "--storage",
                 "Connection refused", WAITS, id="run-storage"),
    pytest.param(("best", "--study", "tiny", "--storage", "foo://x"), "--storage", "unsupported", REFUSED,
                 id="best"),
    pytest.param(("report", "--study", "tiny", "--storage", "foo://x"), "--storage", "unsupported", REFUSED,
                 id="report"),
    pytest.param(("compress", "--study", "tiny", "--prune", "0.5", "--storage", "foo://x"), "--storage",
                 "unsupported", REFUSED, id="compress"),
    pytest.param(("train", "tiny.yaml", "--tracking-uri", "{web}"), "--tracking-uri", "not an MLflow", REFUSED,
                 id="train"),
    pytest.param(("ui", "--tracking-uri", "{web}"), "--tracking-uri", "not an MLflow", REFUSED, id="ui"),
]


@pytest.mark.parametrize(("argv", "option", "says", "when"), CASES)
def test_a_store_that_was_never_there_is_one_line_and_exit_2(argv, option, says, when, places, request, project,
                                                             capsys, monkeypatch):
    values = dict(places)
    if any("{cluster}" in arg for arg in argv):
        values["cluster"] = request.getfixturevalue("password_cluster")
    monkeypatch.setenv(CONNECT_ENV, str(DEADLINE) if when == WAITS else "30")
    code, err, seconds = _cli(capsys, *(arg.format(**values) for arg in argv))
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {option} "), err
    assert says.format(**values) in lines[0], err
    assert PASSWORD not in err
    if when == WAITS:
        assert DEADLINE <= seconds < DEADLINE + SLACK, (seconds, err)
    else:
        assert seconds < AT_ONCE_SECONDS, (seconds, err)
    print(f"{request.node.callspec.id}: {seconds:.2f}s")


def test_the_command_line_itself_gives_up_in_seconds(project):
    """The issue's first report, as a user runs it: `run` on a port nothing listens on waited 15 minutes."""
    port = free_port()
    started = time.monotonic()
    result = run_cli("run", "tiny.yaml", "--storage", f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/nowhere",
                     cwd=project, env={CONNECT_ENV: str(DEADLINE)}, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --storage postgresql://u:***@127.0.0.1:{port}/nowhere did not answer within 1s "
        "(HPSEARCH_CONNECT_TIMEOUT): Connection refused"]
    assert result.stdout == ""
    # Python's start-up and imports (torch, MLflow) take seconds on a busy machine; the wait used to be 900 s.
    assert seconds < 60, seconds


# ---------------------------------------------------------------- stores that are there pass


@pytest.fixture(scope="module")
def real_mlflow(tmp_path_factory):
    """A real `mlflow server` on loopback (several seconds to start: one for the module)."""
    servers = MlflowServers(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield servers(f"sqlite:///{servers.root}/server.db")
    finally:
        servers.close()


@pytest.mark.slow
def test_real_stores_pass_the_probe_at_once(real_mlflow, postgres_url, project, monkeypatch):
    monkeypatch.setenv(CONNECT_ENV, "30")
    started = time.monotonic()
    preflight.check_stores(postgres_url, real_mlflow)
    preflight.check_stores(None, None)  # the defaults: studies/journal.log and sqlite:///mlruns/mlflow.db
    probe.check_tracking(postgres_url)  # a database-backed tracking store
    assert time.monotonic() - started < AT_ONCE_SECONDS * 2


def test_a_command_that_can_do_without_mlflow_warns_and_goes_on(places, project, monkeypatch, capsys):
    """`best` answers from the study (and checkpoints kept locally) while the tracking server is away."""
    monkeypatch.setenv(CONNECT_ENV, str(DEADLINE))
    probe.check_tracking(f"http://127.0.0.1:{places['closed']}", needed=False)
    assert "warning: --tracking-uri" in capsys.readouterr().err
    with pytest.raises(store_contact.StoreUnusable, match="not an MLflow"):  # a wrong URL is still an error
        probe.check_tracking(places["web"], needed=False)


# ---------------------------------------------------------------- after the store answered


def _operational(message: str) -> Exception:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(message))


@pytest.mark.parametrize(("message", "transient"), [
    ('connection to server at "h", port 5432 failed: Connection refused', True),
    ("server closed the connection unexpectedly", True),
    ("FATAL:  the database system is starting up", True),
    ("FATAL:  sorry, too many clients already", True),
    ('FATAL:  password authentication failed for user "hps"', False),
    ('FATAL:  role "gone" does not exist', False),
    ('FATAL:  database "gone" does not exist', False),
    ("fe_sendauth: no password supplied", False),
    ('invalid sslmode value: "bogus"', False),
    ("unable to open database file", False),
])
def test_only_a_refusal_waiting_cannot_change_is_not_waited_out(message, transient):
    assert is_transient(_operational(message)) is transient
    assert mlflow_client.unreachable(_operational(message)) is transient  # a database-backed tracking store, the same


def test_a_database_dropped_mid_study_fails_at_once_not_after_the_patience(postgres_url, monkeypatch):
    monkeypatch.setenv("HPSEARCH_OUTAGE_SECONDS", "900")
    storage = OutageProofStorage(optuna.storages.RDBStorage(postgres_url, engine_kwargs={"pool_pre_ping": True}),
                                 postgres_url)
    optuna.create_study(study_name="tiny", storage=storage)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {postgres_url.rsplit('/', 1)[1]} WITH (FORCE)")
    started = time.monotonic()
    with pytest.raises(DatabaseRefused, match="does not exist"):
        storage.get_all_studies()
    assert time.monotonic() - started < AT_ONCE_SECONDS


@pytest.mark.parametrize(("url", "args"), [
    ("postgresql://u@h/db", {"connect_timeout": 7}),
    ("postgresql+psycopg://u@h/db", {"connect_timeout": 7}),
    ("postgresql://u@h/db?connect_timeout=30", {}),  # the user's own stays
    ("sqlite:///x.db", {}),
])
def test_each_database_connection_attempt_has_a_deadline(url, args, monkeypatch):
    monkeypatch.setenv(CONNECT_ENV, "6.5")
    assert connect_args(url) == args
