"""A throwaway PostgreSQL server for the tests: initdb in a temporary folder, pg_ctl on a free port.

Debian's PostgreSQL keeps its binaries in /usr/lib/postgresql/<version>/bin, not on PATH.
initdb refuses to run as root, so as root the server runs as the ``postgres`` user the
package created. When no binaries are found the PostgreSQL half of the suite is skipped,
with this reason printed (``-ra``), never silently.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# A migrated, empty ledger database that each test's database is copied from.
TEMPLATE = "leadbridge_template"


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent  # Debian links pg_ctl alone onto PATH
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def unavailable() -> str | None:
    """Why no PostgreSQL server can be started here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    if _bindir() is None:
        return "no PostgreSQL server binaries (pg_ctl) on PATH or in /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as another user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    folder: Path
    port: int
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql://leadbridge@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def start(self, fsync: bool = True) -> None:
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "leadbridge", "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not fsync:
            options += " -c fsync=off -c full_page_writes=off"
        # -w waits until it accepts connections; a loaded machine can take long to start it.
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.folder / "log"), "-w", "-t", "120", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str, template: str = "template1") -> str:
        """A new database on this server, a copy of ``template`` (empty by default); its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def drop_database(self, url: str) -> None:
        """Close every ledger pool this process opened on it, end other sessions, and drop it."""
        import psycopg

        from bridge.ledger_pg import close_ledgers

        close_ledgers(url)
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dump(url: str) -> bytes:
    """Every row of the database at ``url``, as pg_dump writes them."""
    bindir = _bindir()
    assert bindir is not None, unavailable()
    return subprocess.run([str(bindir / "pg_dump"), "--data-only", url], check=True, capture_output=True, timeout=120).stdout


def start_postgres(fsync: bool = True) -> PostgresServer:
    """A new server; ``fsync=False`` for tests, whose crashes are process kills, not power cuts."""
    bindir = _bindir()
    assert bindir is not None, unavailable()
    folder = Path(tempfile.mkdtemp(prefix="leadbridge-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PostgresServer(folder, _free_port(), bindir)
    try:
        server.start(fsync)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return server
