"""Opening study databases: URL checks, SQLite tuning, clean errors and hidden passwords.

Any SQLAlchemy URL works. SQLite is tuned for several worker processes on one file: WAL
journaling (readers never block the writer), ``synchronous=NORMAL`` (no fsync per write; a
power cut may lose the last writes but never corrupts the file) and a long busy timeout, so
four workers run without a "database is locked" error. Server databases get
``pool_pre_ping``, so a restarted server or an idle disconnect costs a reconnect, not a worker.

Every failure becomes a :class:`StorageError` whose message names the URL with its
password masked. Opening for reading never writes: no tables, no journal-mode change.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import optuna.storages._rdb.storage as rdb_storage_module
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from tuner.errors import StorageError

__all__ = [
    "Access",
    "check_storage",
    "describe_url",
    "open_storage",
    "sqlite_path",
    "storage_errors",
]

_logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_SECONDS = 120
CONNECT_TIMEOUT_SECONDS = 10


class Access(enum.Enum):
    """What a command does with the database."""

    READ = "read"
    WRITE = "write"


def sqlite_path(url: str) -> Path | None:
    """Returns the file of a SQLite URL, or None for other databases and in-memory SQLite."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def describe_url(url: str) -> str:
    """Returns the URL with its password masked, for messages and logs."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        # Unparseable, but it may still hold "user:password@".
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def check_storage(url: str, access: Access) -> None:
    """Checks the URL and, for SQLite, the file, without changing anything.

    Call it before taking the study lock, whose SQLite lock file would otherwise be created
    beside a database that cannot be used. A SQLite file's schema version is read here,
    read-only; server databases are checked when connecting.

    Raises:
        StorageError: The URL is malformed or names an unknown driver, or a SQLite file is
            missing (``READ``), cannot be created (``WRITE``) or is not an Optuna database.
    """
    shown = describe_url(url)
    parsed = _parse(url, shown)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(parsed, access, shown)


def open_storage(
    url: str,
    access: Access,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> RDBStorage:
    """Opens an Optuna RDB storage with tuner's settings and errors.

    Args:
        url: A SQLAlchemy database URL.
        access: ``READ`` opens an existing database without changing it; ``WRITE`` creates
            the file and the tables if needed.
        heartbeat_interval: Seconds between heartbeats of running trials. Defaults to none.
        grace_period: Seconds without a heartbeat before a trial is stale.
        stale_trial_callback: Called for each trial that went stale, e.g. to retry it.

    Returns:
        The storage.

    Raises:
        StorageError: The URL is malformed or names an unknown driver, the database cannot
            be reached, created or read, or its schema is from another Optuna version.
    """
    shown = describe_url(url)
    parsed = _parse(url, shown)
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any]
    if backend == "sqlite":
        _check_sqlite(parsed, access, shown)
        engine_kwargs = _sqlite_engine_kwargs(parsed, access)
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if backend == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    with storage_errors(url):
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            skip_table_creation=access is Access.READ,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=stale_trial_callback,
        )


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turns database errors raised inside the block into a :class:`StorageError`.

    For the steps that open a study: connecting, creating tables, taking the study lock.
    """
    shown = describe_url(url)
    try:
        yield
    except ImportError:
        parsed = sqlalchemy.engine.make_url(url)
        hint = (
            " (pip install 'tuner[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
        )
        raise StorageError(
            f"storage {shown}: the database driver '{parsed.get_driver_name()}' is not "
            f"installed{hint}."
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise StorageError(f"cannot open storage {shown}: {_reason(e, url)}") from None
    except optuna.exceptions.StorageInternalError as e:
        cause = e.__cause__ if isinstance(e.__cause__, sqlalchemy.exc.SQLAlchemyError) else e
        raise StorageError(f"cannot use storage {shown}: {_reason(cause, url)}") from None
    except RuntimeError as e:
        if "optuna" not in str(e):
            raise
        raise _schema_error(str(e), shown) from None


def _parse(url: str, shown: str) -> sqlalchemy.engine.URL:
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage URL {shown!r} is malformed; expected e.g. sqlite:///studies/study.db or "
            f"postgresql+psycopg://user@host:5432/db."
        ) from None
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(
            f"storage URL {shown!r} names an unknown database '{parsed.drivername}'; "
            f"use sqlite:///path.db or postgresql+psycopg://..."
        ) from None
    except ImportError:
        pass  # A known dialect whose driver is missing; reported when connecting.
    return parsed


def _check_sqlite(parsed: sqlalchemy.engine.URL, access: Access, shown: str) -> None:
    """Checks a SQLite URL's file, its folder and the version of its schema."""
    if parsed.database in (None, "", ":memory:"):
        raise StorageError(
            f"storage {shown} is an in-memory SQLite database, which worker processes cannot "
            f"share; give a file path, e.g. sqlite:///studies/study.db."
        )
    path = Path(parsed.database)
    if access is Access.READ:
        if not path.is_file():
            raise StorageError(
                f"storage {shown}: the file {path} does not exist; run 'tuner run' or "
                f"'tuner init' first, or fix the path."
            )
        _check_sqlite_file(path, shown, must_be_optuna=True)
        return  # Optuna checks the schema version then, without writing.
    folder = path.parent
    if not folder.is_dir():
        raise StorageError(
            f"storage {shown}: the folder {folder} does not exist; create it or fix the path."
        )
    # Try it: os.access says yes to root even where nobody may create files (/proc, a
    # read-only mount). The database, its journal and the lock file all go in this folder.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise StorageError(
            f"storage {shown}: cannot create files in the folder {folder} "
            f"({e.strerror or type(e).__name__}); choose a writable folder."
        ) from None
    if path.exists():
        _check_sqlite_file(path, shown, must_be_optuna=False)


def _sqlite_engine_kwargs(parsed: sqlalchemy.engine.URL, access: Access) -> dict[str, Any]:
    if access is Access.READ:
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}}
    path = Path(str(parsed.database))

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(
            str(path), timeout=SQLITE_BUSY_TIMEOUT_SECONDS, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return {"creator": connect}


def _check_sqlite_file(path: Path, shown: str, must_be_optuna: bool) -> bool:
    """Refuses files that are not SQLite, or SQLite files that hold someone else's tables.

    Returns whether the file holds an Optuna database (else it is empty).
    """
    revision = None
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            if "alembic_version" in tables:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
        finally:
            connection.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(f"storage {shown}: {path} is not a SQLite database ({e}).") from None
    is_optuna = "studies" in tables and "trials" in tables
    if is_optuna and revision is not None:
        _check_schema_revision(revision, shown)
    if is_optuna or (not tables and not must_be_optuna):
        return is_optuna
    what = "an empty SQLite file" if not tables else "a SQLite database of other tables"
    raise StorageError(
        f"storage {shown}: {path} is {what}, not an Optuna study database; point the "
        f"storage at an Optuna database or at a new file."
    )


def _check_schema_revision(revision: str, shown: str) -> None:
    """Refuses a schema revision other than this Optuna's, as Optuna would, but read-only.

    Optuna checks the version only after it has switched the file's journal mode and added
    missing tables, which would change a database it then refuses. A database whose version
    is not stamped yet is being created by another worker right now; Optuna checks that one.
    """
    import alembic.script  # Only when there is a file to check: it loads plugins.

    # Optuna's own migration scripts, as its _VersionManager finds them.
    scripts = alembic.script.ScriptDirectory(
        str(Path(rdb_storage_module.__file__).parent / "alembic")
    )
    if revision == scripts.get_current_head():
        return
    known = {script.revision for script in scripts.walk_revisions()}
    raise _schema_error(
        "optuna storage upgrade" if revision in known else "pip install -U optuna", shown
    )


def _reason(error: BaseException, url: str) -> str:
    original = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    text = " ".join(lines[:2]) or type(original).__name__
    return _mask_password(text, url)


def _schema_error(message: str, shown: str) -> StorageError:
    if "optuna storage upgrade" in message:
        return StorageError(
            f"storage {shown} was created by an older Optuna and its schema needs upgrading; "
            f"back it up, then run: optuna storage upgrade --storage {shown}"
        )
    if "pip install -U optuna" in message:
        return StorageError(
            f"storage {shown} was created by a newer Optuna; upgrade with: pip install -U optuna"
        )
    return StorageError(f"cannot open storage {shown}: {message}")


def _mask_password(text: str, url: str) -> str:
    try:
        password = sqlalchemy.engine.make_url(url).password
    except sqlalchemy.exc.ArgumentError:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", text)
