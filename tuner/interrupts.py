"""Ctrl-C and SIGTERM: stop the worker between steps, never in the middle of a database write.

Both signals raise ``KeyboardInterrupt`` in the main thread, which Optuna handles by failing
the running trial and re-raising. Inside a :func:`deferred` block, such as the transaction
that starts a trial, the interrupt waits until the block ends, so a trial is never left
half-created.

An interrupt raised asynchronously does not always get through. Keras builds layers inside
bare ``except:`` blocks, which swallow it, and TensorFlow's tracing turns it into another
error (a ``StagingError`` or ``TypeError``). So the stop is also a flag: loops call
:func:`raise_if_stopping` at safe points (every epoch, between trials), and callers that
catch errors ask :func:`stopping` whether an error is really the interrupt.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = [
    "deferred",
    "install_handlers",
    "raise_if_stopping",
    "received_signal",
    "received_signal_name",
    "stopping",
]

_depth = 0
_pending: int | None = None
_received: int | None = None
_previous_unraisablehook = sys.unraisablehook
_redelivering = False
_raised_at: float | None = None
_REDELIVERY_DELAY_SECONDS = 0.05
# A repeat within this time is the same stop arriving twice (Ctrl-C reaches a worker from the
# terminal, and SIGTERM from `tuner run` a moment later); raised again, it would cut short
# the clean-up that queues the running trial again. A later one forces the stop.
_REPEAT_WINDOW_SECONDS = 5.0


def install_handlers() -> None:
    """Makes SIGTERM behave like Ctrl-C, and both wait for :func:`deferred` blocks."""
    global _received, _pending, _raised_at
    _received = _pending = _raised_at = None  # A new run: no stop from an earlier one.
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    if sys.unraisablehook is not _redeliver_swallowed:
        global _previous_unraisablehook
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _redeliver_swallowed


def _redeliver_swallowed(unraisable: sys.UnraisableHookArgs) -> None:
    # A signal handler runs wherever the main thread is, and Python drops exceptions raised
    # inside a weakref callback or __del__ (TensorFlow's objects have many), which would
    # lose the interrupt: the worker would carry on. Deliver the signal again instead, a
    # moment later, from another thread, once the main thread is out of this context.
    global _redelivering, _raised_at
    error = unraisable.exc_value
    if isinstance(error, KeyboardInterrupt) and _received is not None:
        _raised_at = None  # It never got through: the redelivery is no repeat.
        _redelivering = True
        try:
            timer = threading.Timer(
                _REDELIVERY_DELAY_SECONDS,
                _thread.interrupt_main,
                args=(signal.Signals(_received),),
            )
            timer.daemon = True
            timer.start()
        finally:
            _redelivering = False
        return
    _previous_unraisablehook(unraisable)


def received_signal() -> int | None:
    """The last signal that interrupted this process, if any."""
    return _received


def received_signal_name() -> str:
    """The name of the last signal that interrupted this process; ``SIGINT`` if none did."""
    return signal.Signals(_received).name if _received is not None else "SIGINT"


def stopping() -> bool:
    """Whether SIGINT or SIGTERM has arrived since :func:`install_handlers`."""
    return _received is not None


def raise_if_stopping() -> None:
    """Raises the interrupt again if a signal arrived but the process carried on.

    For safe points in long loops: it makes the stop certain when a library swallowed the
    first ``KeyboardInterrupt``. Inside a :func:`deferred` block it does nothing; the block's
    end is the safe point there.
    """
    if _received is not None and _depth == 0:
        _interrupt(_received)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending, _received
    if _raised_at is not None and time.monotonic() - _raised_at < _REPEAT_WINDOW_SECONDS:
        return  # Already stopping.
    _received = signum
    if _redelivering:
        return  # It would be dropped here too; the redelivery already on its way brings it.
    if _depth > 0:
        _pending = signum
        return
    _interrupt(signum)


def _interrupt(signum: int) -> None:
    global _raised_at
    _raised_at = time.monotonic()
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
            _interrupt(signum)
