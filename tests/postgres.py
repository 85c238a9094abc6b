"""A real PostgreSQL server for the tests, started from the installed binaries.

The server lives in a temporary folder, listens on a free port of 127.0.0.1 (password
authentication) and on a Unix socket in that folder (trust, for the fixture itself), and is
stopped at the end. initdb refuses to run as root, so as root the server commands run as
the ``postgres`` system user. Without PostgreSQL binaries the tests that need a server are
skipped, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "PostgresDatabase",
    "PostgresServer",
    "postgres_db",
    "postgres_server",
    "private_postgres",
]

USER = "tuner"
_SYSTEM_USER = "postgres"
_database_numbers = itertools.count()


def find_bin_dir() -> Path | None:
    """The folder of the newest installed PostgreSQL's server binaries, if any."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda p: _version_key(Path(p).parent.parent.name))
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server in its own folder.

    Args:
        bin_dir: The folder of initdb, pg_ctl and postgres.
        password: The password of the superuser ``tuner``.
    """

    def __init__(self, bin_dir: Path, password: str) -> None:
        self.bin_dir = bin_dir
        self.password = password
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        # Under /tmp (not pytest's private tmp folder) so that the postgres user can reach it.
        self.root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self._as_root:
            system_user = pwd.getpwnam(_SYSTEM_USER)
            os.chown(self.root, system_user.pw_uid, system_user.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(password + "\n")
        if self._as_root:
            os.chown(password_file, system_user.pw_uid, system_user.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--pwfile",
            str(password_file),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-instructions",
        )
        password_file.unlink()

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        if self._as_root:
            command = ["runuser", "-u", _SYSTEM_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr}{result.stdout}\n{log}"
            )
        return result

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            # Test data need not survive a power cut; a clean restart still keeps it all.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "start", "--wait", "-D", str(self.data), "-l", str(self.log), "-o", options
        )

    def stop(self) -> None:
        """Stops the server, disconnecting every client."""
        self._run("pg_ctl", "stop", "--wait", "-m", "fast", "-D", str(self.data))

    def restart(self, down_seconds: float = 0.0) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, then the server is back.

        Args:
            down_seconds: Keep the server down this long between stopping and starting.
        """
        if down_seconds:
            self.stop()
            time.sleep(down_seconds)
            self.start()
            return
        self._run(
            "pg_ctl", "restart", "--wait", "-m", "fast", "-D", str(self.data), "-l", str(self.log)
        )

    def url(self, database: str, password: str | None = None, port: int | None = None) -> str:
        """A SQLAlchemy URL of ``database``; ``password=""`` leaves the password out."""
        password = self.password if password is None else password
        credentials = f"{USER}:{password}" if password else USER
        return f"postgresql+psycopg://{credentials}@127.0.0.1:{port or self.port}/{database}"

    def create_database(self) -> PostgresDatabase:
        """A new, empty database on this server."""
        import psycopg

        name = f"test_{next(_database_numbers)}_{secrets.token_hex(3)}"
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return PostgresDatabase(server=self, name=name)

    def remove(self) -> None:
        """Stops the server if it runs and deletes its folder."""
        with contextlib.suppress(RuntimeError):
            if (self.data / "postmaster.pid").exists():
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class PostgresDatabase:
    """A database of a test server, with the ways to reach it."""

    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        """The URL with the password in it."""
        return self.server.url(self.name)

    @property
    def url_without_password(self) -> str:
        """The URL without a password, for libpq's PGPASSWORD."""
        return self.server.url(self.name, password="")

    @property
    def password(self) -> str:
        return self.server.password


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires the PostgreSQL tests to run.")
    pytest.skip(reason)


def _new_server() -> PostgresServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            _unavailable(f"running as root needs the '{_SYSTEM_USER}' user to run PostgreSQL")
    # Hex only, so the password is one token in any message that might leak it.
    server = PostgresServer(bin_dir, password="pw" + secrets.token_hex(12))
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the whole session. Do not stop or restart it."""
    server = _new_server()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> PostgresDatabase:
    """A new, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone, which it may stop and restart."""
    server = _new_server()
    try:
        yield server
    finally:
        server.remove()
