"""A worker process: pull trials from the shared study until its budget is met.

Each worker opens the study (creating it if it is the first), then runs trials: queued
retries first, then new ones while the budget allows. When the budget is used up it waits
for the other workers' running trials, because a worker that dies leaves its trial to be
failed by the heartbeat and queued again, and someone must run it. A trial that fails is
recorded and the worker goes on; after ``max_consecutive_failures`` failures in a row it
stops, since something is wrong beyond one trial. SIGTERM and Ctrl-C stop it between steps:
the trial it was running is failed and queued again, so nothing is left RUNNING and the
budget is kept.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tuner import interrupts
from tuner.budget import BudgetExhausted
from tuner.buffered_storage import BufferedStorage
from tuner.config import StudyConfig
from tuner.errors import TunerError
from tuner.search import make_pruner, make_sampler, worker_seed
from tuner.storage import Access, check_storage, open_storage, storage_errors
from tuner.study import open_study
from tuner.study_lock import StudyLock

__all__ = ["TooManyFailures", "WorkerReport", "configure_threads", "connect", "run_worker"]

_logger = logging.getLogger(__name__)

# Attributes of a failed attempt that must not be copied onto its retry.
_ATTEMPT_ATTRS = ("error", "interrupted")


class TooManyFailures(TunerError):
    """Every recent trial failed, so the worker stopped instead of burning the budget."""


@dataclass
class WorkerReport:
    """What one worker did.

    Attributes:
        worker_index: The worker's index, from which its sampler seed derives.
        states: How many trials ended in each state, by state name.
    """

    worker_index: int
    states: dict[str, int] = field(default_factory=dict)

    @property
    def trials(self) -> int:
        """The number of trials this worker finished."""
        return sum(self.states.values())


@dataclass
class Connection:
    """An open study with the storage and lock behind it."""

    study: optuna.Study
    storage: BufferedStorage
    lock: StudyLock


def configure_threads(threads: int) -> None:
    """Sizes TensorFlow's thread pools; call before TensorFlow runs anything."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def connect(config: StudyConfig, sampler_seed: int) -> Connection:
    """Opens (or creates) the study for a worker, with heartbeats and the budget.

    Raises:
        StorageError: The database cannot be opened.
        ConfigError: The study exists with other settings.
    """
    study_settings = config.study
    check_storage(study_settings.storage, Access.WRITE)  # before the lock file is made
    lock = StudyLock(study_settings.storage, study_settings.name)
    with storage_errors(study_settings.storage), lock:
        backend = open_storage(
            study_settings.storage,
            Access.WRITE,
            heartbeat_interval=study_settings.heartbeat_interval,
            grace_period=study_settings.grace_period,
            stale_trial_callback=Requeue(study_settings.max_retries),
        )
        storage = BufferedStorage(backend, lock, n_trials=study_settings.n_trials)
        study = open_study(
            storage,
            config,
            lock,
            sampler=make_sampler(config, sampler_seed),
            pruner=make_pruner(config),
        )
    return Connection(study=study, storage=storage, lock=lock)


class Requeue:
    """Queues a failed trial again with the same parameters, up to ``max_retries`` times.

    Optuna's ``RetryHeartbeatStaleTrialCallback``, minus the attributes that describe the
    failed attempt, so that the retry does not look failed or interrupted itself.
    """

    def __init__(self, max_retries: int) -> None:
        self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attempt = copy.deepcopy(trial)
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _ATTEMPT_ATTRS}
        attempt.system_attrs = {
            k: v for k, v in trial.system_attrs.items() if not k.startswith("artifacts:")
        }
        _logger.info("Queuing trial %d again.", trial.number)
        self._retry(study, attempt)


def run_worker(config: StudyConfig, *, worker_index: int | None = None) -> WorkerReport:
    """Runs trials of the study until its budget is met.

    Args:
        config: The study configuration.
        worker_index: Distinguishes this worker's sampler seed from the others'. Defaults to
            a random index, for workers started by hand on other machines.

    Returns:
        What the worker did.

    Raises:
        TooManyFailures: ``max_consecutive_failures`` trials failed in a row.
        KeyboardInterrupt: SIGINT or SIGTERM; the running trial was failed and queued again.
        TunerError: The study, its storage or its data cannot be used.
    """
    from tuner.data import load_dataset

    index = worker_index if worker_index is not None else secrets.randbelow(2**31)
    seed = worker_seed(config.study.seed, index)
    # Data first: bad data then creates no study and costs no TensorFlow import.
    dataset = load_dataset(config.data)
    connection = connect(config, seed)
    study = connection.study
    _logger.info(
        "Worker %d (sampler seed %d) on %s, pid %d.", index, seed, socket.gethostname(), os.getpid()
    )
    from tuner.artifacts import TrialArtifacts
    from tuner.objective import Objective

    objective = Objective(config, dataset, after_training=TrialArtifacts(config))
    watcher = _TrialWatcher(config.study.max_consecutive_failures)
    report = WorkerReport(worker_index=index, states=watcher.states)
    interrupts.install_handlers()
    try:
        while True:
            try:
                study.optimize(objective, catch=(Exception,), callbacks=[watcher])
            except BudgetExhausted:
                pass
            if watcher.gave_up:
                raise TooManyFailures(
                    f"{watcher.limit} trials failed in a row, the last with: "
                    f"{watcher.last_error or 'no error recorded'}; stopping this worker."
                )
            if not _wait_for_running_trials(study, config.study.heartbeat_interval):
                break
    except KeyboardInterrupt:
        _requeue_interrupted(connection, config)
        raise
    finally:
        connection.lock.close()
    _logger.info("Worker %d done: %s.", index, report.states)
    return report


class _TrialWatcher:
    """Logs each finished trial, counts states, and stops after too many failures in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.states: dict[str, int] = {}
        self.failures_in_a_row = 0
        self.gave_up = False
        self.last_error: str | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        interrupts.raise_if_stopping()  # A stop that a library swallowed ends it here.
        self.states[trial.state.name] = self.states.get(trial.state.name, 0) + 1
        if trial.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            self.last_error = trial.user_attrs.get("error")
            _logger.warning(
                "Trial %d failed: %s", trial.number, self.last_error or "no error recorded"
            )
            if self.failures_in_a_row >= self.limit:
                self.gave_up = True
                study.stop()
            return
        self.failures_in_a_row = 0
        if trial.state == TrialState.COMPLETE:
            _logger.info(
                "Trial %d: validation MSE %.4f after %s epochs.",
                trial.number,
                trial.value,
                trial.user_attrs.get("epochs_trained"),
            )
        else:
            _logger.info(
                "Trial %d pruned after %d epochs.", trial.number, len(trial.intermediate_values)
            )


def _wait_for_running_trials(study: optuna.Study, heartbeat_interval: int) -> bool:
    """Waits while other workers run trials; True if a trial was queued meanwhile.

    A worker that died leaves a RUNNING trial, which turns stale after the grace period and
    is queued again by ``fail_stale_trials``: this worker then runs it.
    """
    poll = min(2.0, float(heartbeat_interval))
    announced = False
    while True:
        interrupts.raise_if_stopping()
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return False
        if not announced:
            _logger.info("Budget used up; waiting for the other workers' running trials.")
            announced = True
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll)


def _requeue_interrupted(connection: Connection, config: StudyConfig) -> None:
    signal_name = interrupts.received_signal_name()
    with interrupts.deferred():
        stopped = connection.storage.abandon(TrialState.FAIL, {"interrupted": signal_name})
        last = connection.storage.last_finished()
        if last is not None and last.state == TrialState.FAIL and "interrupted" in last.user_attrs:
            stopped.append(last)
        requeue = Requeue(config.study.max_retries)
        for trial in {t.number: t for t in stopped}.values():
            requeue(connection.study, trial)
    _logger.warning("Stopped by %s; %d running trial(s) queued again.", signal_name, len(stopped))
