"""PostgreSQL: a real server (the machine's PostgreSQL 15) on 127.0.0.1, one cluster per test session.

Production MLflow runs on PostgreSQL (the chart's bundled MLflow too), so the tests' MLflow server
does as well. `initdb` refuses to run as root; when the tests run as root, the cluster belongs to
the `postgres` system user and its commands run through `runuser`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .process import ServerProcess, free_port

BINARIES = ("initdb", "postgres")


@dataclass
class PostgresServer:
    port: int
    user: str
    process: ServerProcess
    home: Path  # the cluster's directory

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self, database: str) -> str:
        """A SQLAlchemy URL with the driver named (SQLAlchemy 2.1's default is psycopg 3)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run(
            [_tool("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return self.url(name)


def available() -> bool:
    return all(shutil.which(b) for b in BINARIES)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not on PATH: PostgreSQL 15 (initdb, postgres, psql) is needed")
    return found


def _as_owner(argv: list[str]) -> list[str]:
    """Run as the `postgres` user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _ready(port: int, user: str) -> bool:
    """Accepting queries: PostgreSQL listens before it has finished starting (a connection then
    gets "the database system is starting up"), so an open port is not enough."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    except OSError:
        return False
    probe = [_tool("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "postgres",
             "-c", "SELECT 1"]  # fmt: skip
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def start_postgres(workdir: Path) -> PostgresServer:
    """initdb a fresh cluster (trust auth on 127.0.0.1 only) and start it; its log goes to `workdir`.

    As root the cluster lives in a directory of its own under the system temp dir: the `postgres`
    user cannot enter the test's private temp dirs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    home = Path(tempfile.mkdtemp(prefix="sphinxx-pg-")) if os.geteuid() == 0 else workdir
    if os.geteuid() == 0:
        home.chmod(0o755)
        shutil.chown(home, "postgres", "postgres")
    data = home / "data"
    subprocess.run(
        _as_owner([_tool("initdb"), "-D", str(data), "-U", user, "--auth=trust", "--no-sync", "-E", "UTF8"]),
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    argv = _as_owner([
        _tool("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(home),
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    ])  # fmt: skip
    process = ServerProcess("postgres", argv, workdir / "postgres.log")
    process.start(lambda: _ready(port, user), timeout=60)
    return PostgresServer(port=port, user=user, process=process, home=home)
