"""The worker's storage: batched writes that plain Optuna reads back, and the trial budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.budget import BudgetExhausted, count_toward_budget
from tuner.buffered_storage import BufferedStorage
from tuner.storage import Access, open_storage
from tuner.study_lock import StudyLock
from tuner.worker import Requeue


def _worker_study(
    url: str, n_trials: int | None, **heartbeat: int
) -> tuple[optuna.Study, BufferedStorage]:
    backend = open_storage(url, Access.WRITE, **heartbeat)
    storage = BufferedStorage(backend, StudyLock(url, "s"), n_trials=n_trials)
    study = optuna.create_study(
        study_name="s",
        storage=storage,
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    return study, storage


def _plain(url: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=RDBStorage(url))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def away_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 5 hours off UTC, so that a time stored as local instead of UTC shows."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("away_from_utc")
def test_a_trial_reads_back_identically_through_plain_optuna(url: str) -> None:
    study, _ = _worker_study(url, n_trials=None)
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    layers = trial.suggest_int("layers", 1, 5)
    act = trial.suggest_categorical("act", ["relu", "tanh"])
    for step, value in enumerate([3.0, 2.0, float("inf"), 1.5]):
        trial.report(value, step)
    trial.set_user_attr("val_mae", 0.25)
    trial.set_user_attr("curve", [1, 2, 3])
    trial.set_user_attr("val_mae", 0.5)  # overwritten before the flush
    study.tell(trial, 1.5)

    [stored] = _plain(url).get_trials()
    assert stored.state == TrialState.COMPLETE
    assert stored.value == 1.5
    assert stored.params == {"lr": lr, "layers": layers, "act": act}
    assert stored.intermediate_values == {0: 3.0, 1: 2.0, 2: float("inf"), 3: 1.5}
    assert stored.user_attrs == {"val_mae": 0.5, "curve": [1, 2, 3]}
    assert stored.datetime_start is not None and stored.datetime_complete is not None
    assert timedelta(0) <= stored.datetime_complete - stored.datetime_start < timedelta(minutes=1)


def test_writes_reach_the_database_at_the_first_report_then_at_heartbeats(url: str) -> None:
    study, storage = _worker_study(url, n_trials=None)
    trial = study.ask()
    layers = trial.suggest_int("layers", 1, 5)
    act = trial.suggest_categorical("act", ["relu", "tanh"])
    [drawn] = _plain(url).get_trials()
    assert drawn.state == TrialState.RUNNING
    assert drawn.params == {}  # drawn values wait for the first report...

    trial.report(0.7, 0)
    [first] = _plain(url).get_trials()
    # ...which writes them all in one transaction, so a retry of the trial finds them.
    assert first.params == {"layers": layers, "act": act}
    assert first.intermediate_values == {0: 0.7}

    trial.report(0.6, 1)
    trial.set_user_attr("note", "x")
    [later] = _plain(url).get_trials()
    assert later.intermediate_values == {0: 0.7} and later.user_attrs == {}

    storage.record_heartbeat(trial._trial_id)
    [beat] = _plain(url).get_trials()
    assert beat.intermediate_values == {0: 0.7, 1: 0.6}
    assert beat.user_attrs == {"note": "x"}
    trial.report(0.5, 2)
    trial.set_user_attr("note", "y")
    study.tell(trial, 0.5)
    [done] = _plain(url).get_trials()
    assert done.intermediate_values == {0: 0.7, 1: 0.6, 2: 0.5}
    assert done.user_attrs == {"note": "y"}
    assert done.state == TrialState.COMPLETE


def test_pruners_see_the_running_trials_own_reports(url: str) -> None:
    study, _ = _worker_study(url, n_trials=None)
    study.pruner = optuna.pruners.ThresholdPruner(upper=1.0)
    trial = study.ask()
    trial.report(0.5, 0)
    assert not trial.should_prune()
    trial.report(5.0, 1)
    assert trial.should_prune()


def test_new_trials_stop_at_the_budget_but_queued_ones_still_run(url: str) -> None:
    study, storage = _worker_study(url, n_trials=3)
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    study.enqueue_trial({})  # counts toward the budget: 3 of 3
    with pytest.raises(BudgetExhausted):
        storage.create_new_trial(storage.get_study_id_from_name("s"))
    queued = study.ask()  # the queue is taken first, within the budget
    study.tell(queued, 2.0)
    with pytest.raises(BudgetExhausted):
        study.ask()
    assert [t.state for t in _plain(url).get_trials()] == [TrialState.COMPLETE] * 3


def test_a_stale_trial_is_failed_and_queued_again_without_using_budget(url: str) -> None:
    def worker() -> tuple[optuna.Study, BufferedStorage]:
        backend = open_storage(
            url,
            Access.WRITE,
            heartbeat_interval=1,
            grace_period=2,
            stale_trial_callback=Requeue(max_retries=3),
        )
        storage = BufferedStorage(backend, StudyLock(url, "s"), n_trials=2)
        return optuna.create_study(study_name="s", storage=storage, load_if_exists=True), storage

    dying, dying_storage = worker()
    dead = dying.ask()
    dead.suggest_int("layers", 1, 5)
    dying_storage.record_heartbeat(dead._trial_id)  # flushes the parameter, then beats once
    # That worker now "dies": it never beats again. Another worker looks for stale trials.
    alive, _ = worker()
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(alive)

    trials = _plain(url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs["retry_history"] == [0]
    assert count_toward_budget(trials) == 1
    retry = alive.ask()
    assert retry.number == 1 and retry.params == trials[0].params


def test_results_of_a_trial_failed_by_another_worker_are_dropped(url: str) -> None:
    study, _ = _worker_study(url, n_trials=None)
    trial = study.ask()
    trial.report(1.0, 0)
    RDBStorage(url).set_trial_state_values(trial._trial_id, TrialState.FAIL)
    # No exception: inside study.optimize one would crash the worker (Optuna asserts).
    study.tell(trial, 1.0)
    [stored] = _plain(url).get_trials()
    assert stored.state == TrialState.FAIL
    assert stored.intermediate_values == {}
    assert study.trials[0].state == TrialState.FAIL  # the worker sees the database's version
