"""Retrying database calls through transient faults: a server restart, a dropped connection.

A worker should outlive a database restart: the call that meets the outage waits with
exponential backoff and tries again on a fresh connection (``pool_pre_ping`` discards the
dead ones). Errors that are not about the connection are raised at once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

__all__ = ["is_transient", "retry_transient"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_WAIT_SECONDS = 300.0
_FIRST_DELAY = 0.25
MAX_DELAY_SECONDS = 5.0


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` comes from a lost or refused database connection.

    Optuna wraps driver errors in ``StorageInternalError``, so the cause counts too.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            # SQLite reports missing tables and unopenable files as OperationalError too;
            # of its errors only a busy database is worth waiting for.
            if isinstance(current.orig, sqlite3.Error):
                return "locked" in str(current.orig) or "busy" in str(current.orig)
            return True
        if isinstance(current, sqlalchemy.exc.DisconnectionError):
            return True
        if not isinstance(
            current, optuna.exceptions.StorageInternalError | sqlalchemy.exc.SQLAlchemyError
        ):
            return False
        current = current.__cause__ or current.__context__
    return False


def retry_transient(
    call: Callable[[], T],
    *,
    what: str,
    max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
    max_delay: float = MAX_DELAY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs ``call``, retrying with backoff while it fails with a transient database error.

    Args:
        call: The database call.
        what: What the call does, for the log.
        max_wait: Give up and re-raise after waiting this long in total. Defaults to 300 s.
        max_delay: The longest wait between two attempts, which bounds how late a call
            notices that the database is back. Defaults to 5 s.
        sleep: The sleep function, replaceable in tests.

    Returns:
        What ``call`` returns.
    """
    waited = 0.0
    delay = min(_FIRST_DELAY, max_delay)
    while True:
        try:
            return call()
        except Exception as e:
            if not is_transient(e) or waited >= max_wait:
                raise
            if waited == 0.0:
                _logger.warning("Database unavailable while trying to %s; retrying.", what)
            sleep(delay)
            waited += delay
            delay = min(delay * 2, max_delay)
