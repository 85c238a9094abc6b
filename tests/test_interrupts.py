"""SIGTERM and Ctrl-C in a worker: never lost, never in the middle of a database write."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

# The signal arrives while the main thread runs a weakref callback, where Python drops any
# exception, KeyboardInterrupt included; TensorFlow runs such callbacks all the time.
_SIGNAL_INSIDE_A_CALLBACK = """
import os, signal, sys, time, weakref
from tuner import interrupts

interrupts.install_handlers()

class Model:
    pass

def finalizer(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # the handler runs here, inside the callback
        pass

model = Model()
ref = weakref.ref(model, finalizer)
try:
    del model
    for _ in range(500):
        time.sleep(0.01)
except KeyboardInterrupt as e:
    print("interrupted by", e)
    sys.exit(0)
print("the interrupt was lost")
sys.exit(1)
"""


def test_a_signal_that_lands_in_a_finalizer_still_interrupts() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SIGNAL_INSIDE_A_CALLBACK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "interrupted by SIGTERM"


# Ctrl-C reaches a worker from the terminal, and SIGTERM from `tuner run` right after: the
# second must not cut short the clean-up that the first started.
_SIGNAL_TWICE = """
import os, signal, sys, time
from tuner import interrupts

interrupts.install_handlers()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt as e:
    first = str(e)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # the clean-up
except KeyboardInterrupt:
    print("the clean-up was interrupted")
    sys.exit(1)
print("stopped once, by", first, "; received", interrupts.received_signal())
"""


def test_the_same_stop_arriving_twice_interrupts_once() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SIGNAL_TWICE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "stopped once, by SIGINT ; received 2"
