"""SIGTERM and Ctrl-C in a worker: never lost, never in the middle of a database write."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.support import ROOT, run_cli, tiny_study, trials_of


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``script`` in a fresh Python process, as a worker runs: signals are its own."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


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
    result = _run_script(_SIGNAL_INSIDE_A_CALLBACK)
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
    result = _run_script(_SIGNAL_TWICE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "stopped once, by SIGINT ; received 2"


# A library that catches everything, as Keras's layer building does with bare `except:`.
_SIGNAL_SWALLOWED = """
import os, signal, sys, time
from tuner import interrupts

interrupts.install_handlers()
interrupts.raise_if_stopping()  # No signal yet: nothing happens.
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except BaseException:
    pass
print("stopping:", interrupts.stopping())
try:
    interrupts.raise_if_stopping()
except KeyboardInterrupt as e:
    print("interrupted by", e)
    sys.exit(0)
sys.exit(1)
"""


def test_a_swallowed_interrupt_is_raised_again_at_the_next_safe_point() -> None:
    result = _run_script(_SIGNAL_SWALLOWED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split("\n")[:2] == ["stopping: True", "interrupted by SIGTERM"]


# A worker whose first model build receives SIGTERM, and then loses the interrupt the way
# Keras and TensorFlow do: swallowed by a bare `except:`, or turned into another error by
# tracing (seen as StagingError and TypeError).
_WORKER_WITH_A_LOSSY_BUILD = """
import os, signal, sys, time
import tuner.recipe
from tuner.cli import main

build = tuner.recipe.build_model
calls = 0

def lossy_build(*args, **kwargs):
    global calls
    calls += 1
    if calls == 1:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except BaseException as e:
            if sys.argv[1] == "convert":
                raise TypeError("Failed to convert elements of (None,) to Tensor.") from e
    return build(*args, **kwargs)

tuner.recipe.build_model = lossy_build
sys.exit(main(["worker", sys.argv[2], "--worker-index", "0"]))
"""


@pytest.mark.parametrize("loss", ["swallow", "convert"])
def test_a_worker_stops_even_when_a_library_loses_the_interrupt(tmp_path: Path, loss: str) -> None:
    study_file, url = tiny_study(tmp_path, n_trials=3, epochs=3)
    result = _run_script(_WORKER_WITH_A_LOSSY_BUILD, loss, str(study_file))
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    trials = trials_of(url, "tiny")
    # Stopped in its first trial, which is failed as interrupted (not as broken) and queued
    # again; no other trial was started.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs.get("interrupted") == "SIGTERM"
    assert "error" not in trials[0].user_attrs
    # The same worker command, run again, finishes the study.
    again = run_cli("worker", str(study_file), "--worker-index", "0", timeout=120)
    assert again.returncode == 0, again.stderr
    finished = [t for t in trials_of(url, "tiny") if t.state == TrialState.COMPLETE]
    assert len(finished) == 3
