"""No password hpsearch is given — in an option, the space file or the environment — appears in anything it
prints, writes or stores; and store URLs come from option > environment > file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.core.credentials import mask_url, redact, usable_url

from .support import REPO, run_cli

PASSWORD = "Pa55-w0rd-xq7"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"postgresql://hps:{PASSWORD}@db:5432/hpsearch", "postgresql://hps:***@db:5432/hpsearch"),
        (f"postgresql+psycopg://hps:{PASSWORD}@db/h?sslmode=require", "postgresql+psycopg://hps:***@db/h?sslmode=require"),
        (f"postgresql://db/h?password={PASSWORD}", "postgresql://db/h?password=***"),
        (f"postgresql://hps@db/h?sslmode=require&sslpassword={PASSWORD}",
         "postgresql://hps@db/h?sslmode=require&sslpassword=***"),
        (f"https://mlflow/x?api_token={PASSWORD}", "https://mlflow/x?api_token=***"),
        (f"http://bob:{PASSWORD}@mlflow:5000", "http://mlflow:5000"),
        (f"https://bob:{PASSWORD}@mlflow.example.com/prefix", "https://mlflow.example.com/prefix"),
        (f"redis://:{PASSWORD}@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("sqlite:///mlruns/mlflow.db", "sqlite:///mlruns/mlflow.db"),
        ("studies/journal.log", "studies/journal.log"),
        (None, None),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_redact_masks_urls_and_known_passwords_in_free_text(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "pg-env-secret")
    text = (f"API request to http://bob:{PASSWORD}@mlflow:5000/api failed; "
            f"could not connect to 'postgresql://hps:{PASSWORD}@db/h': bad password {PASSWORD} pg-env-secret")
    out = redact(text)
    assert PASSWORD not in out
    assert "pg-env-secret" not in out
    assert "http://mlflow:5000/api" in out
    assert "postgresql://hps:***@db/h" in out


# (free text quoting a URL, what it shows) in a process that never parsed the URL: the pattern alone finds it
REDACTED = [
    ("connect to postgresql://hps:PW;x@db/h: refused", "connect to postgresql://hps:***@db/h: refused"),
    ("GET http://bob:PW,x@mlflow:5000/api failed", "GET http://mlflow:5000/api failed"),
    ("postgresql://hps@db/h?sslpassword=PW", "postgresql://hps@db/h?sslpassword=***"),
]


@pytest.mark.parametrize(("text", "shown"), REDACTED)
def test_redact_finds_urls_whose_password_holds_separators(fresh_process, text, shown):
    assert redact(text.replace("PW", PASSWORD)) == shown


def test_a_masked_url_is_made_usable_from_the_environment_or_without_its_password(monkeypatch):
    real = f"postgresql://hps:{PASSWORD}@db:5432/hpsearch"
    monkeypatch.setenv("HPSEARCH_STORAGE", real)
    assert usable_url(mask_url(real), "HPSEARCH_STORAGE") == real
    monkeypatch.delenv("HPSEARCH_STORAGE")
    # libpq then takes the password from PGPASSWORD or ~/.pgpass
    assert usable_url(mask_url(real), "HPSEARCH_STORAGE") == "postgresql://hps@db:5432/hpsearch"
    assert usable_url("studies/journal.log", "HPSEARCH_STORAGE") == "studies/journal.log"


def test_storage_precedence_is_option_then_environment_then_file(write_space, workdir):
    space = write_space({"study": {"storage": str(workdir / "from_file" / "journal.log")}})
    env = {"HPSEARCH_STORAGE": str(workdir / "from_env" / "journal.log")}

    def used(*argv: str, env: dict | None = None) -> str:
        result = run_cli("status", str(space), *argv, cwd=workdir, env=env)
        assert result.returncode == 2, result.stderr
        return result.stderr

    clean = {k: v for k, v in os.environ.items() if k != "HPSEARCH_STORAGE"}
    assert "from_file" in used(env=clean)
    assert "from_env" in used(env=env)
    assert "from_option" in used("--storage", str(workdir / "from_option" / "journal.log"), env=env)


def test_an_unreachable_tracking_server_error_never_shows_its_password(write_space, workdir):
    """The error path: MLflow's message quotes the URL it could not reach; the study still records none."""
    space = write_space({"study": {"n_trials": 1}})
    env = {"MLFLOW_TRACKING_URI": f"http://hps:{PASSWORD}@127.0.0.1:9/", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "HPSEARCH_CONNECT_TIMEOUT": "1"}
    result = run_cli("run", str(space), cwd=workdir, env=env, timeout=300)
    # A server that never answered is the start-up probe's (tests/test_store_fail_fast.py): one line, exit 2
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: --tracking-uri http://127.0.0.1:9/ did not answer within 1s" in result.stderr, result.stderr
    assert_nowhere(PASSWORD, result.stdout + result.stderr, workdir, mine=(space,))


def test_ui_banner_and_command_line_hide_the_password(capsys, monkeypatch, workdir):
    from hpsearch.cli import ui
    from hpsearch.cli.main import main
    from hpsearch.tracking import probe

    from .support import free_port

    store = f"postgresql://hps:{PASSWORD}@127.0.0.1:5432/mlflow"
    started = []

    class ServerThatAnswersThenExits:
        pid, returncode = 0, 0

        def poll(self):
            return 0

    real_popen = ui.subprocess.Popen

    def popen(cmd, *args, **kwargs):
        if cmd[1:3] != ["-m", "mlflow"]:  # anything else (e.g. a library's own helper) runs for real
            return real_popen(cmd, *args, **kwargs)
        started.append((cmd, kwargs["env"]))
        return ServerThatAnswersThenExits()

    # What `ps` would show (argv) and what the banner prints; the real server is tests/test_ui.py's.
    monkeypatch.setattr(ui.subprocess, "Popen", popen)
    monkeypatch.setattr(ui, "answers", lambda url: True)
    monkeypatch.setattr(ui, "end_tree", lambda proc, hurry=None: None)
    monkeypatch.setattr(probe, "check_tracking", lambda uri, needed=True: None)  # the store is fake too
    with pytest.raises(SystemExit):
        main(["ui", "--tracking-uri", store, "--port", str(free_port())])
    out, err = capsys.readouterr()
    assert "postgresql://hps:***@127.0.0.1:5432/mlflow" in out, err
    cmd, env = started[0]
    assert PASSWORD not in out + err + " ".join(cmd)  # the store goes by environment
    assert env["MLFLOW_BACKEND_STORE_URI"] == store


def assert_nowhere(secret: str, output: str, root: Path, mine: tuple[Path, ...] = ()) -> None:
    """`secret` is in no output and no file under root, but the ones the user wrote (`mine`)."""
    assert secret not in output, output
    for path in root.rglob("*"):
        if path.is_file() and path not in mine:
            assert secret.encode() not in path.read_bytes(), path


def test_pgpassword_completes_a_url_without_password(monkeypatch):
    """A storage URL without a password works: libpq (under SQLAlchemy's default driver, psycopg) reads PGPASSWORD.
    The local server trusts every login, so what is checked is that the password is what the driver sends."""
    pytest.importorskip("psycopg")
    import sqlalchemy

    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    engine = sqlalchemy.create_engine(PG_ADMIN)
    try:
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.info.password == PASSWORD
    finally:
        engine.dispose()


# ---------------------------------------------------------------- a real study with a password in both URLs

@pytest.fixture
def secret_role():
    """A PostgreSQL role with a password owning two fresh databases (the Optuna study, the MLflow store)."""
    psycopg = pytest.importorskip("psycopg")
    suffix = uuid.uuid4().hex[:8]
    role, dbs = f"hps_secret_{suffix}", [f"hps_study_{suffix}", f"hps_mlflow_{suffix}"]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        for db in dbs:
            admin.execute(f"CREATE DATABASE {db} OWNER {role}")
        try:
            yield [f"postgresql://{role}:{PASSWORD}@127.0.0.1:5432/{db}" for db in dbs]
        finally:
            for db in dbs:
                admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def dump_database(url: str) -> str:
    """Every row of every table, as text."""
    import psycopg

    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1)) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        return "\n".join(str(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)


@pytest.mark.slow
def test_a_password_in_both_urls_appears_nowhere(write_space, workdir, secret_role):
    storage, tracking = secret_role
    # the storage from the environment, the tracking URI from the space file
    space = write_space({"study": {"n_trials": 2}, "train": {"epochs": 1},
                         "tracking": {"uri": tracking}})
    env = {"HPSEARCH_STORAGE": storage, "OMP_NUM_THREADS": "1"}
    outputs = []
    for argv in (("run", str(space)), ("run", str(space)), ("validate", str(space)), ("status",),
                 ("status", "--format", "json"), ("status", "--format", "csv"), ("best", "--format", "json"),
                 ("best", "--export"), ("status", "--study", "nope")):
        result = run_cli(*argv, cwd=workdir, env=env)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == (2 if "nope" in argv else 0), (argv, result.stdout, result.stderr)
    assert outputs[-1].strip().endswith("studies there: tiny")  # the error names the store, masked
    assert "resuming study 'tiny' (postgresql://" in outputs[1]
    assert ":***@127.0.0.1" in outputs[1]
    best = json.loads(outputs[6])
    assert best["storage"] == mask_url(storage)
    assert best["tracking_uri"] == mask_url(tracking)
    assert (workdir / "studies" / "tiny" / "best" / "model.pt").exists()  # the checkpoint came through
    # status/best with no argument found the study from .last_run.json (masked) and the environment
    assert json.loads((workdir / "studies" / ".last_run.json").read_text())["storage"] == mask_url(storage)

    # every output, every file under the work folder (studies/, exports, mlruns/ artifacts)
    assert_nowhere(PASSWORD, "\n".join(outputs), workdir, mine=(space,))
    # every Optuna attribute, and every row of both databases (study attrs, trial attrs, MLflow params/tags)
    store = optuna.storages.RDBStorage(storage)
    study = optuna.load_study(study_name="tiny", storage=store)
    system = store.get_study_system_attrs(store.get_study_id_from_name("tiny"))
    attrs = [study.user_attrs, system] + [t.user_attrs | t.system_attrs for t in study.trials]
    assert PASSWORD not in json.dumps(attrs, default=str)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 3  # the parent and two trials
    for run in runs:
        assert PASSWORD not in json.dumps([run.data.params, run.data.tags, run.info.artifact_uri])
    for url in secret_role:
        text = dump_database(url)
        assert "tiny" in text
        assert PASSWORD not in text


# ---------------------------------------------------------------- the space file as the parent run keeps it

TASK = "task: {model: {name: mobilenet_v2, weights: none}, data: {name: fake}}\n"
# (id, a space file holding PW): each hides the password where a URL pattern stops or cannot see it.
# A new finding is one more row.
SPACE_SECRETS = [
    ("semicolon-in-password", "study: {name: s, storage: 'postgresql://hps:PW;x@db:5432/h'}\n"),
    ("quoted-over-two-lines", 'study:\n  name: s\n  storage: "postgresql://hps:PW\n    x@db:5432/h"\n'),
    ("comma-in-http-password", "study: {name: s}\ntracking: {uri: 'http://bob:PW,x@mlflow:5000'}\n"),
    ("sslpassword-query", "study: {name: s, storage: 'postgresql://hps@db/h?sslpassword=PW'}\n"),
    ("repeated-in-a-comment", "study: {name: s, storage: 'postgresql://hps:PW;@db/h'}  # the password: PW;\n"),
    ("percent-encoded", "study: {name: s, storage: 'postgresql://hps:PW%3B@db/h'}  # PW;\n"),
    ("escaped-in-double-quotes", 'study: {name: s, storage: "postgresql://hps:PW\\x3bx@db/h"}\n'),
    ("block-scalar", "study:\n  name: s\n  storage: >-\n    postgresql://hps:PW;x@db/h\n"),
    ("token-in-any-url", "study: {name: s}\ntracking: {experiment: 'see https://wiki/x?access_token=PW,'}\n"),
]


@pytest.fixture
def fresh_process(monkeypatch):
    """A process that has parsed no URL yet (`hpsearch report` of a study another process ran)."""
    from hpsearch.core import credentials

    monkeypatch.setattr(credentials, "_known", set())


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A real MLflow store (sqlite; each test's artifacts in its own folder), made once: its schema takes seconds."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return db, MlflowClient(tracking_uri=f"sqlite:///{db}")


@pytest.mark.parametrize("text", [c[1] for c in SPACE_SECRETS], ids=[c[0] for c in SPACE_SECRETS])
def test_the_space_artifact_masks_every_store_password(fresh_process, mlflow_store, tmp_path, text):
    from hpsearch.core import credentials, record_keys
    from hpsearch.reporting import parent_run as study_story
    from hpsearch.spec.redaction import masked_spec
    from hpsearch.spec.study_spec import load_spec

    db, client = mlflow_store
    space = tmp_path / "s.yaml"
    space.write_text(text.replace("PW", PASSWORD) + TASK)
    study = optuna.create_study()
    study.set_user_attr(record_keys.STUDY_SPACE_FILE, str(space))
    # the resolved spec as `run` records it (store URLs masked), read in another process: nothing learnt here
    study.set_user_attr(record_keys.STUDY_SPEC, masked_spec(load_spec(space)).to_dict())
    credentials._known.clear()
    experiment = client.create_experiment(uuid.uuid4().hex, artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    study_story._attach_space(client, run_id, study)
    kept = (tmp_path / "artifacts" / run_id / "artifacts" / "space" / "s.yaml").read_text()
    assert PASSWORD not in kept, kept
    assert yaml.safe_load(kept)["task"]["model"]["name"] == "mobilenet_v2", kept  # still the space file
    resolved = (tmp_path / "artifacts" / run_id / "artifacts" / "space" / study_story.RESOLVED_SPACE).read_text()
    assert PASSWORD not in resolved, resolved
    assert_nowhere(PASSWORD, "", tmp_path, mine=(space,))  # nor in any other artifact
    assert PASSWORD.encode() not in db.read_bytes()  # nor in the store's params and tags


@pytest.mark.parametrize("text", [c[1] for c in SPACE_SECRETS], ids=[c[0] for c in SPACE_SECRETS])
def test_validate_prints_no_password_from_the_space_file(fresh_process, capsys, tmp_path, text):
    from hpsearch.cli.main import main

    space = tmp_path / "s.yaml"
    space.write_text(text.replace("PW", PASSWORD) + TASK)
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(space)])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert PASSWORD not in out + err, out


def test_examples_readme_mentions_the_credential_variables():
    readme = (REPO / "README.md").read_text()
    for name in ("HPSEARCH_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"):
        assert name in readme, name
