"""Helpers for tests that run several real workers on one study and watch its database."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from tests.support import ROOT, tiny_study, tuner_command
from tuner.budget import count_toward_budget, superseded_numbers
from tuner.storage import Access, open_storage, sqlite_path

# Trials long enough to be caught running, a heartbeat every second and a grace period of
# three, so that faults resolve within seconds. An epoch takes about 3 ms: at 150 epochs two
# workers' half-second trials overlapped too briefly to be caught both running, now and then.
FAULT_STUDY = {"heartbeat_interval": 1, "grace_period": 3, "max_retries": 3}
FAULT_TRAIN = {"early_stopping_patience": 10_000}
FAULT_EPOCHS = 600


def fault_study(folder: Path, n_trials: int, url: str | None = None) -> tuple[Path, str]:
    """A tiny CSV study with a fast heartbeat; on ``url`` if given, else SQLite."""
    study_file, sqlite_url = tiny_study(
        folder,
        n_trials=n_trials,
        epochs=FAULT_EPOCHS,
        study={**FAULT_STUDY, **({"storage": url} if url else {})},
        train=FAULT_TRAIN,
    )
    return study_file, url or sqlite_url


class Worker:
    """A ``tuner worker`` process whose log goes to a file."""

    def __init__(
        self,
        study_file: Path,
        log: Path,
        *args: str,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            command or tuner_command("worker", str(study_file), "--threads", "1", *args),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 300) -> int:
        """Waits for the worker to exit and returns its exit code (negative: killed)."""
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log_file.close()

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        """Kills the worker if it still runs; for test cleanup."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._log_file.close()


def start_workers(study_file: Path, folder: Path, count: int, **kwargs: Any) -> list[Worker]:
    return [
        Worker(study_file, folder / f"worker{i}.log", "--worker-index", str(i), **kwargs)
        for i in range(count)
    ]


class StudyWatch:
    """Reads a study's trials while workers run, through restarts of its database."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._storage: Any = None

    def trials(self) -> list[FrozenTrial]:
        """The trials now, or [] while the database cannot be read."""
        try:
            if self._storage is None:
                if not _schema_complete(self.url):
                    return []
                self._storage = open_storage(self.url, Access.READ)
            study = optuna.load_study(study_name=self.name, storage=self._storage)
            return study.get_trials(deepcopy=False)
        except Exception:
            return []

    def wait_until(
        self,
        condition: Callable[[list[FrozenTrial]], bool],
        timeout: float = 240,
        workers: Iterable[Worker] = (),
    ) -> list[FrozenTrial]:
        """Polls until ``condition(trials)`` holds; fails if every worker exits first."""
        deadline = time.monotonic() + timeout
        workers = list(workers)
        while time.monotonic() < deadline:
            trials = self.trials()
            if condition(trials):
                return trials
            if workers and all(w.process.poll() is not None for w in workers):
                logs = "\n".join(w.output()[-3000:] for w in workers)
                raise AssertionError(f"the workers exited before the condition held:\n{logs}")
            time.sleep(0.1)
        raise AssertionError(f"timed out; trials: {[(t.number, t.state.name) for t in trials]}")


def _schema_complete(url: str) -> bool:
    # Optuna's RDBStorage writes its version rows even when opened to read: opened while a
    # worker creates the schema, it would race that worker. So wait until the last row is in.
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return False  # and do not create the file by connecting
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return (
                connection.execute(sqlalchemy.text("SELECT * FROM alembic_version")).first()
                is not None
            )
    except sqlalchemy.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def running(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.RUNNING]


def assert_exact_budget(trials: list[FrozenTrial], n_trials: int) -> list[FrozenTrial]:
    """Checks the study's end: n_trials counted, every one finished, none left over.

    Returns:
        The failed trials that were retried.
    """
    states = [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if not t.state.is_finished()], states
    assert count_toward_budget(trials) == n_trials, states
    retried = superseded_numbers(trials)
    superseded = [t for t in trials if t.number in retried]
    assert all(t.state == TrialState.FAIL for t in superseded), states
    return superseded


def retry_of(trials: list[FrozenTrial], failed: FrozenTrial) -> FrozenTrial:
    """The trial that ran ``failed`` again; checks that it drew the same parameters."""
    [retry] = [t for t in trials if failed.number in t.system_attrs.get("retry_history", ())]
    assert retry.params == failed.params
    assert retry.system_attrs["retry_history"][-1] == failed.number
    return retry
