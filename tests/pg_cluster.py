"""A private PostgreSQL cluster for tests that stop and restart the database under a running study.

initdb/pg_ctl from /usr/lib/postgresql/*/bin (Debian's layout) or PATH; as root they run as the
`postgres` user, in a temp dir of its own (pytest's tmp_path is private to root). The cluster
listens on 127.0.0.1 on a free port, trusts local connections and keeps its socket in its folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_USER = "postgres"


def find_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (the newest installed version), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(initdb)).parent
    return None


def missing_reason() -> str | None:
    """Why a private cluster cannot be started here (None: it can)."""
    if find_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no {PG_USER!r} user to run initdb/pg_ctl as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (to run initdb/pg_ctl as postgres) is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """initdb + pg_ctl in a temp dir; `url` is the superuser's URL to the `postgres` database."""

    def __init__(self) -> None:
        folder = find_bin()
        assert folder is not None, missing_reason()
        self.bin = folder
        self.root = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.url = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(PG_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                               f"{self.server_log()}")
        return result

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, "-A", "trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def destroy(self) -> None:
        """Stop at once (if it runs) and remove the folder; never raises."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
