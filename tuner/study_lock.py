"""A lock per study, shared by every worker process on every host that uses the same database.

Two moments need one: creating the schema and the study (workers that start together on a
new database would otherwise race), and starting a trial within the budget (two workers must
not both take the last slot, nor both take the same queued trial, which SQLite cannot
prevent by itself). The lock is the database's own where it has one: a PostgreSQL advisory
lock or a MySQL named lock, held on a connection of its own. SQLite lives on one host, so a
lock file beside the database does it.
"""

from __future__ import annotations

import logging
import threading
import zlib
from pathlib import Path
from types import TracebackType

import filelock
import sqlalchemy
import sqlalchemy.exc

from tuner.storage import CONNECT_TIMEOUT_SECONDS, sqlite_path

__all__ = ["StudyLock"]

_logger = logging.getLogger(__name__)

_LOCK_TIMEOUT_SECONDS = 600


class StudyLock:
    """A re-entrant, cross-process lock named after a study.

    It has its own connection, so it can be taken before the storage exists (to create the
    schema) and is not disturbed by the storage's transactions.

    Args:
        url: The storage URL.
        study_name: The study the lock is for.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self._url = url
        self._engine: sqlalchemy.engine.Engine | None = None
        self._backend = sqlalchemy.engine.make_url(url).get_backend_name()
        self._name = f"tuner:{study_name}"
        # Advisory locks take a 64-bit key; crc32 is stable across processes and hosts.
        self._key = zlib.crc32(self._name.encode())
        self._connection: sqlalchemy.engine.Connection | None = None
        self._depth = 0
        self._thread_lock = threading.RLock()
        self._file_lock: filelock.BaseFileLock | None = None
        path = sqlite_path(url)
        if self._backend == "sqlite" and path is not None:
            self._file_lock = filelock.FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_SECONDS)
        elif self._backend not in ("postgresql", "mysql"):
            _logger.warning(
                "No cross-host lock for %s databases: workers that start together may race.",
                self._backend,
            )

    def __enter__(self) -> StudyLock:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._release()
        finally:
            self._thread_lock.release()

    def _acquire(self) -> None:
        if self._file_lock is not None:
            self._file_lock.acquire()
        elif self._backend == "postgresql":
            self._execute("SELECT pg_advisory_lock(:key)", key=self._key)
        elif self._backend == "mysql":
            self._execute(
                "SELECT GET_LOCK(:name, :timeout)", name=self._name, timeout=_LOCK_TIMEOUT_SECONDS
            )

    def _release(self) -> None:
        if self._file_lock is not None:
            self._file_lock.release()
        elif self._backend == "postgresql":
            self._execute("SELECT pg_advisory_unlock(:key)", key=self._key, reconnect=False)
        elif self._backend == "mysql":
            self._execute("SELECT RELEASE_LOCK(:name)", name=self._name, reconnect=False)

    def _execute(self, sql: str, reconnect: bool = True, **params: object) -> None:
        # A server lock lives as long as its connection, so a dead connection (server
        # restart) has already released it: reconnect to take it, never to give it back.
        # The connection is kept between uses, so it may have died meanwhile; then one
        # attempt on a new connection follows at once.
        for attempt in (1, 2):
            reused = self._connection is not None and not self._connection.closed
            try:
                if not reused:
                    if not reconnect:
                        return
                    if self._engine is None:
                        connect_args = (
                            {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
                            if self._backend == "postgresql"
                            else {}
                        )
                        self._engine = sqlalchemy.create_engine(
                            self._url,
                            pool_pre_ping=True,
                            pool_size=1,
                            max_overflow=0,
                            connect_args=connect_args,
                        )
                    self._connection = self._engine.connect()
                assert self._connection is not None
                self._connection.execute(sqlalchemy.text(sql), params)
                self._connection.commit()
                return
            except sqlalchemy.exc.DBAPIError:
                self.close()
                if not reconnect:
                    return
                if not reused or attempt == 2:
                    raise

    def close(self) -> None:
        """Closes the lock's own connection, which releases any server-side lock."""
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlalchemy.exc.DBAPIError:
                pass
            self._connection = None

    @property
    def path(self) -> Path | None:
        """The lock file, for SQLite databases."""
        return Path(self._file_lock.lock_file) if self._file_lock is not None else None
