"""Ctrl-C and SIGTERM: stop the worker between steps, never in the middle of a database write.

Both signals raise ``KeyboardInterrupt`` in the main thread, which Optuna handles by failing
the running trial and re-raising. Inside a :func:`deferred` block, such as the transaction
that starts a trial, the interrupt waits until the block ends, so a trial is never left
half-created.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["deferred", "install_handlers", "received_signal"]

_depth = 0
_pending: int | None = None
_received: int | None = None


def install_handlers() -> None:
    """Makes SIGTERM behave like Ctrl-C, and both wait for :func:`deferred` blocks."""
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)


def received_signal() -> int | None:
    """The last signal that interrupted this process, if any."""
    return _received


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending, _received
    _received = signum
    if _depth > 0:
        _pending = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def deferred() -> Iterator[None]:
    """Holds back SIGINT and SIGTERM until the block ends (main thread only)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise KeyboardInterrupt(signal.Signals(signum).name)
