"""``tuner run``: start worker processes on this machine and watch the study until they finish.

Workers are separate processes running ``tuner worker``, exactly what a user starts by hand
on another machine, so one code path serves both. The launcher creates the study first, so
its errors show before any worker starts, sizes each worker's TensorFlow thread pools to its
share of the cores, and reads progress from the database.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from tuner.budget import superseded_numbers
from tuner.config import STORAGE_ENV, StudyConfig
from tuner.search import make_pruner, make_sampler
from tuner.storage import Access, check_storage, open_storage, storage_errors
from tuner.study import load_existing_study, open_study
from tuner.study_lock import StudyLock

__all__ = ["Progress", "RunResult", "available_cores", "default_workers", "initialize", "run"]

_logger = logging.getLogger(__name__)

_STOP_TIMEOUT_SECONDS = 30.0


def available_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


def default_workers(n_trials: int) -> int:
    """One worker per core: the trials are small, so more would only share cores."""
    return max(1, min(available_cores(), n_trials))


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores, at least one."""
    return max(1, available_cores() // workers)


def initialize(config: StudyConfig) -> None:
    """Creates the database, its schema and the study, or checks that the study may resume.

    Raises:
        StorageError: The database cannot be opened or created.
        ConfigError: The study exists with other settings.
    """
    settings = config.study
    check_storage(settings.storage, Access.WRITE)  # before the lock file is made
    lock = StudyLock(settings.storage, settings.name)
    try:
        with storage_errors(settings.storage), lock:
            storage = open_storage(settings.storage, Access.WRITE)
            open_study(
                storage,
                config,
                lock,
                sampler=make_sampler(config, settings.seed),
                pruner=make_pruner(config),
            )
    finally:
        lock.close()


@dataclass(frozen=True)
class Progress:
    """A snapshot of the study while workers run.

    Attributes:
        finished: Trials finished that count toward the budget.
        budget: The study's ``n_trials``.
        running: Trials running now.
        best_value: The lowest validation MSE so far, if any trial completed.
        best_number: The number of that trial.
        new: Trials that finished since the previous snapshot.
    """

    finished: int
    budget: int
    running: int
    best_value: float | None
    best_number: int | None
    new: tuple[FrozenTrial, ...] = ()


@dataclass
class RunResult:
    """How the workers ended.

    Attributes:
        exit_codes: Each worker's exit code.
        interrupted: Whether the user stopped the run.
    """

    exit_codes: list[int] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failed_workers(self) -> list[int]:
        """Indexes of workers that exited with an error."""
        return [i for i, code in enumerate(self.exit_codes) if code != 0]


def run(
    config: StudyConfig,
    study_file: Path,
    *,
    workers: int,
    on_progress: Callable[[Progress], None],
    worker_log_level: str = "warning",
    poll_seconds: float = 0.5,
) -> RunResult:
    """Starts ``workers`` worker processes and reports progress until they all exit.

    The study must exist: call :func:`initialize` first, so that its errors show before
    any worker starts.

    Args:
        config: The resolved study configuration.
        study_file: The study file, passed on to the workers.
        workers: How many worker processes to start.
        on_progress: Called with a snapshot whenever a trial finishes.
        worker_log_level: The workers' log level on stderr. Defaults to warnings only.
        poll_seconds: How often to read the study. Defaults to 0.5 s.

    Returns:
        How the workers ended. On Ctrl-C the workers are stopped (their running trials are
        queued again) and ``interrupted`` is set.
    """
    processes = _start_workers(config, study_file, workers, worker_log_level)
    result = RunResult()
    watcher = _Watcher(config)
    try:
        while True:
            alive = any(p.poll() is None for p in processes)
            snapshot = watcher.read()
            if snapshot is not None:
                on_progress(snapshot)
            if not alive:
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        result.interrupted = True
        _stop(processes)
        snapshot = watcher.read()
        if snapshot is not None:
            on_progress(snapshot)
    result.exit_codes = [p.wait() for p in processes]
    return result


def _start_workers(
    config: StudyConfig, study_file: Path, workers: int, log_level: str
) -> list[subprocess.Popen[bytes]]:
    threads = threads_per_worker(workers)
    # The storage URL goes by environment, not argv, so a password never shows in `ps`.
    env = {**os.environ, STORAGE_ENV: config.study.storage}
    processes = []
    for index in range(workers):
        command = [
            sys.executable,
            "-m",
            "tuner",
            "--log-level",
            log_level,
            "worker",
            str(study_file),
            "--worker-index",
            str(index),
            "--threads",
            str(threads),
            "--study-name",
            config.study.name,
            "--n-trials",
            str(config.study.n_trials),
        ]
        processes.append(subprocess.Popen(command, env=env))
    _logger.info("Started %d workers with %d thread(s) each.", workers, threads)
    return processes


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _logger.warning("Worker %d did not stop in time; killing it.", process.pid)
            process.kill()


class _Watcher:
    """Reads the study and turns it into :class:`Progress` snapshots when something changed."""

    def __init__(self, config: StudyConfig) -> None:
        self._budget = config.study.n_trials
        storage = open_storage(config.study.storage, Access.READ)
        self._study = load_existing_study(storage, config)
        self._seen: set[int] = set()
        self._last: tuple[int, int] | None = None

    def read(self) -> Progress | None:
        try:
            trials = self._study.get_trials(deepcopy=False)
        except Exception as e:
            # A busy or restarting database only delays the next snapshot.
            _logger.debug("Could not read progress: %s", e)
            return None
        superseded = superseded_numbers(trials)
        finished = [
            t
            for t in trials
            if t.state.is_finished() and not (t.state == TrialState.FAIL and t.number in superseded)
        ]
        new = tuple(t for t in finished if t.number not in self._seen)
        self._seen.update(t.number for t in new)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        key = (len(finished), running)
        if not new and key == self._last:
            return None
        self._last = key
        scored = [
            (t.value, t.number)
            for t in trials
            if t.state == TrialState.COMPLETE and t.value is not None
        ]
        best_value, best_number = min(scored) if scored else (None, None)
        return Progress(
            finished=len(finished),
            budget=self._budget,
            running=running,
            best_value=best_value,
            best_number=best_number,
            new=new,
        )
