"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl start``.

The server listens on 127.0.0.1 at a free port (and on a unix socket in its folder), trusts
local connections and is stopped and deleted at the end. As root (CI), ``initdb`` refuses to
run, so the server runs as the ``postgres`` system user (``runuser -u postgres --``).

Binaries are looked up on ``PATH`` and in ``/usr/lib/postgresql/<version>/bin`` (where Debian's
``postgresql`` package puts them; ``.ci/run`` installs it). Without them the tests FAIL with a
message saying so; ``OSF_SKIP_POSTGRES=1`` turns that into a skip, for a laptop without PostgreSQL.

    pytest fixture:  from tests.postgres_server import postgres_url  (a fresh database per test)
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

SKIP_ENV = "OSF_SKIP_POSTGRES"
SUPERUSER = "osf"


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest ``/usr/lib/postgresql/N/bin``."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if (Path(d) / "pg_ctl").exists()]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1)
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary folder; ``url(db)`` for SQLAlchemy/Optuna."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = 0
        self.as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:  # initdb refuses root
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, PostgreSQL needs the 'postgres' system user to run as "
                                   "(apt-get install -y postgresql creates it)") from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="osfpg-"))  # short: the unix socket path must be < 108 bytes
        self.data = self.root / "data"
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [*self.as_user, *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}{tail}")

    def start(self) -> "PostgresServer":
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        for attempt in range(5):  # another process may take the free port before the server binds it
            self.port = _free_port()
            opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                          "-o", opts, "-w", "-t", "30", "start")
                return self
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = "osf_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def require_bin_dir() -> Path:
    """The PostgreSQL binaries, or a test failure (a skip with ``OSF_SKIP_POSTGRES=1``) saying they are missing."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        msg = ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor in /usr/lib/postgresql/*/bin: "
               "install them (Debian: apt-get install -y postgresql; .ci/run does) or set "
               f"{SKIP_ENV}=1 to skip the PostgreSQL tests")
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(reason="OSF_SKIP_POSTGRES=1 and no PostgreSQL server binaries (initdb, pg_ctl): the PostgreSQL "
                               "tests need a real server")
        pytest.fail(msg, pytrace=False)
    return bin_dir


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A running throwaway server, shared by the tests of one module."""
    server = PostgresServer(require_bin_dir())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh database on the throwaway server."""
    return postgres_server.create_database()
