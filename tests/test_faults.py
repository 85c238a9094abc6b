"""Faults made for real: killed and interrupted workers, a restarted database server.

The end-to-end tests run real worker processes on a tiny study with a heartbeat every second
and a grace period of three (tests/cluster.py), kill or signal them in the middle of a trial,
and check the study's end state in the database. The others check, in process, the storage
behaviour those faults rely on.
"""

from __future__ import annotations

import datetime
import signal
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from tests.cluster import (
    StudyWatch,
    Worker,
    assert_exact_budget,
    fault_study,
    retry_of,
    running,
    start_workers,
)
from tests.postgres import PostgresDatabase, PostgresServer
from tests.support import run_cli, trials_of
from tuner.buffered_storage import BufferedStorage
from tuner.storage import Access, open_storage
from tuner.study_lock import StudyLock
from tuner.worker import Requeue

N_PARAMS = 5  # in tiny_study's space


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_url(request: pytest.FixtureRequest) -> str | None:
    """None for a SQLite file in tmp_path, else the URL of a new PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_db").url)


def catch_mid_trial(watch: StudyWatch, workers: list[Worker], victims: list[Worker]) -> set[int]:
    """Freezes ``victims`` (SIGSTOP) at a moment when each of ``workers`` trains a trial.

    Each worker runs one trial at a time, so when the database shows as many RUNNING trials
    with all their parameters drawn as there are workers, every worker is training one. A
    trial may end between that read and the freeze; a second read after the freeze tells,
    and then it tries again.

    Returns:
        The IDs of the RUNNING trials, the victims' among them.
    """

    def training(trials: list[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in running(trials) if len(t.params) == N_PARAMS]

    while True:
        seen = watch.wait_until(lambda ts: len(training(ts)) == len(workers), workers=workers)
        ids = {t._trial_id for t in training(seen)}
        for victim in victims:
            victim.signal(signal.SIGSTOP)
        if ids <= {t._trial_id for t in running(watch.trials())}:
            return ids
        for victim in victims:
            victim.signal(signal.SIGCONT)


def _stop_all(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_failed_and_run_again(
    tmp_path: Path, server_url: str | None
) -> None:
    # The two workers start together on an empty database: one of them creates the study.
    study_file, url = fault_study(tmp_path, n_trials=4, url=server_url)
    workers = start_workers(study_file, tmp_path, 2)
    victim, survivor = workers
    try:
        watch = StudyWatch(url, "tiny")
        catch_mid_trial(watch, workers, [victim])
        victim.signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert survivor.wait() == 0, survivor.output()
    finally:
        _stop_all(workers)

    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["tiny"]
    trials = trials_of(url, "tiny")
    [failed] = assert_exact_budget(trials, 4)
    assert "interrupted" not in failed.user_attrs  # killed, not stopped
    assert retry_of(trials, failed).state == TrialState.COMPLETE
    assert all(t.state == TrialState.COMPLETE for t in trials if t is not failed)


@pytest.mark.slow
def test_sigterm_and_ctrl_c_stop_workers_mid_trial_and_the_study_resumes(
    tmp_path: Path, server_url: str | None
) -> None:
    study_file, url = fault_study(tmp_path, n_trials=3, url=server_url)
    assert run_cli("init", str(study_file)).returncode == 0
    workers = start_workers(study_file, tmp_path, 2)
    terminated, interrupted = workers
    try:
        watch = StudyWatch(url, "tiny")
        catch_mid_trial(watch, workers, workers)
        terminated.signal(signal.SIGTERM)
        interrupted.signal(signal.SIGINT)
        for worker in workers:
            worker.signal(signal.SIGCONT)
        # A liveness bound, not a timing: the workers stop within seconds.
        assert terminated.wait(timeout=30) == 128 + signal.SIGTERM, terminated.output()
        assert interrupted.wait(timeout=30) == 128 + signal.SIGINT, interrupted.output()
    finally:
        _stop_all(workers)

    trials = trials_of(url, "tiny")
    assert not running(trials)
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.user_attrs["interrupted"] for t in stopped) == ["SIGINT", "SIGTERM"]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["retry_history"][-1] for t in queued) == sorted(
        t.number for t in stopped
    )

    resumed = Worker(study_file, tmp_path / "resumed.log")
    assert resumed.wait() == 0, resumed.output()
    trials = trials_of(url, "tiny")
    retried = assert_exact_budget(trials, 3)
    assert sorted(t.number for t in retried) == sorted(t.number for t in stopped)
    for failed in retried:
        retry = retry_of(trials, failed)
        assert retry.state == TrialState.COMPLETE
        assert "interrupted" not in retry.user_attrs


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_carry_on_through_a_postgres_restart(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    url = private_postgres.create_database().url
    study_file, _ = fault_study(tmp_path, n_trials=6, url=url)
    assert run_cli("init", str(study_file)).returncode == 0
    workers = start_workers(study_file, tmp_path, 3)
    try:
        watch = StudyWatch(url, "tiny")
        watch.wait_until(
            lambda ts: len(running(ts)) >= 2 and any(t.state.is_finished() for t in ts),
            workers=workers,
        )
        # Down for longer than the grace period: no heartbeat can be recorded meanwhile.
        private_postgres.restart(down_seconds=5)
        codes = [w.wait() for w in workers]
        assert codes == [0, 0, 0], [w.output()[-3000:] for w in workers]
    finally:
        _stop_all(workers)

    trials = trials_of(url, "tiny")
    assert_exact_budget(trials, 6)
    # Nothing lost: no trial was failed for the outage. Nothing duplicated: six trials,
    # six different draws.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    logs = "".join(w.output() for w in workers)
    assert "Database unavailable" in logs or "not recorded" in logs  # the outage was met


@pytest.mark.slow
@pytest.mark.postgres
def test_all_workers_killed_then_one_restarted_cleans_up_and_finishes(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    url = postgres_db.url
    study_file, _ = fault_study(tmp_path, n_trials=4, url=url)
    assert run_cli("init", str(study_file)).returncode == 0
    workers = start_workers(study_file, tmp_path, 2)
    try:
        killed = catch_mid_trial(StudyWatch(url, "tiny"), workers, workers)
        for worker in workers:
            worker.signal(signal.SIGKILL)
            assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        _stop_all(workers)
    before = trials_of(url, "tiny")
    assert {t._trial_id for t in running(before)} == killed

    later = Worker(study_file, tmp_path / "later.log")
    assert later.wait() == 0, later.output()
    trials = trials_of(url, "tiny")
    retried = assert_exact_budget(trials, 4)
    assert {t._trial_id for t in retried} == killed
    new = sorted((t for t in trials if t.number > max(b.number for b in before)), key=_number)
    # The stale trials were failed and queued before any new trial started, so the first
    # trials created after the restart are their retries.
    assert [retry_of(trials, failed).number for failed in sorted(retried, key=_number)] == [
        t.number for t in new[: len(retried)]
    ]
    assert all(t.state == TrialState.COMPLETE for t in new)


def _number(trial: FrozenTrial) -> int:
    return trial.number


# The storage behaviour behind those faults, in process.


def _worker_storage(
    url: str, interval: int = 1, grace: int = 2
) -> tuple[optuna.Study, BufferedStorage]:
    backend = open_storage(
        url,
        Access.WRITE,
        heartbeat_interval=interval,
        grace_period=grace,
        stale_trial_callback=Requeue(max_retries=3),
    )
    storage = BufferedStorage(backend, StudyLock(url, "s"), n_trials=None)
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    return study, storage


def _age_heartbeats(url: str, seconds: int) -> None:
    table = models.TrialHeartbeatModel.__table__
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        for trial_id, beat in list(
            connection.execute(sqlalchemy.select(table.c.trial_id, table.c.heartbeat))
        ):
            connection.execute(
                table.update()
                .where(table.c.trial_id == trial_id)
                .values(heartbeat=beat - datetime.timedelta(seconds=seconds))
            )
    engine.dispose()


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, _ = _worker_storage(url)
    # Another worker created this trial and died before its heartbeat thread started.
    plain = RDBStorage(url)
    orphan = plain.create_new_trial(study._study_id)
    plain.set_trial_param(orphan, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))

    optuna.storages.fail_stale_trials(study)
    assert plain.get_trial(orphan).state == TrialState.RUNNING  # adopted, not failed at once
    _age_heartbeats(url, seconds=60)
    time.sleep(1.1)  # workers look for stale trials once per heartbeat interval
    optuna.storages.fail_stale_trials(study)

    trials = plain.get_all_trials(study._study_id)
    assert trials[0].state == TrialState.FAIL
    [queued] = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.params == {"x": 0.5}
    assert queued.system_attrs["retry_history"] == [trials[0].number]


def test_the_heartbeat_survives_a_lost_database_and_suspends_stale_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, storage = _worker_storage(url, interval=1, grace=2)
    other = RDBStorage(url, heartbeat_interval=1, grace_period=2)
    stale = other.create_new_trial(study._study_id)
    other.record_heartbeat(stale)
    _age_heartbeats(url, seconds=60)
    trial = study.ask()
    trial.report(0.5, 0)

    def refuse(trial_id: int) -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))

    monkeypatch.setattr(storage.backend, "record_heartbeat", refuse)
    storage.record_heartbeat(trial._trial_id)  # logs, does not raise: the thread lives on
    # This worker just lost the database, so the others' heartbeats may have been lost too.
    assert storage._get_stale_trial_ids(study._study_id) == []
    monkeypatch.undo()

    storage.record_heartbeat(trial._trial_id)
    assert other.get_trial(trial._trial_id).intermediate_values == {0: 0.5}
    storage._last_outage = None  # as if the grace period had passed since
    time.sleep(1.1)  # workers look for stale trials once per heartbeat interval
    assert storage._get_stale_trial_ids(study._study_id) == [stale]


@pytest.mark.parametrize("final", [False, True])
def test_a_commit_whose_acknowledgement_was_lost_is_retried_safely(
    tmp_path: Path, final: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, storage = _worker_storage(url)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.report(0.5, 0)  # the first report writes the parameter and step 0 at once
    trial.report(0.4, 1)
    trial.set_user_attr("note", "a")
    owned = storage._owned[trial._trial_id]
    state, values = (TrialState.COMPLETE, [0.5]) if final else (None, None)
    pending = (
        {n: (owned.params[n], owned.distributions[n]) for n in owned.new_params},
        {s: owned.intermediate[s] for s in owned.new_steps},
        {k: owned.user_attrs[k] for k in owned.new_user_attrs},
        {},
    )
    # The first attempt commits, but its acknowledgement never arrives...
    storage._commit(owned, *pending, state, values, datetime.datetime.now())
    # ...so the same writes are retried.
    if final:
        assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    else:
        storage.flush(trial._trial_id)
        study.tell(trial, 0.5)

    [stored] = RDBStorage(url).get_all_trials(study._study_id)
    assert stored.state == TrialState.COMPLETE and stored.value == 0.5
    assert stored.intermediate_values == {0: 0.5, 1: 0.4}
    assert list(stored.params) == ["x"] and stored.user_attrs == {"note": "a"}


@pytest.mark.postgres
def test_a_postgres_restart_costs_a_reconnect_not_a_worker(
    private_postgres: PostgresServer,
) -> None:
    url = private_postgres.create_database().url
    study, storage = _worker_storage(url, interval=1, grace=2)
    lock = StudyLock(url, "s")
    with lock:
        pass
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    _age_heartbeats(url, seconds=60)

    private_postgres.restart()
    # pool_pre_ping: the first read after the restart works, with no retry.
    plain = open_storage(url, Access.READ)
    assert plain.get_all_trials(study._study_id)[0].state == TrialState.RUNNING
    # The lock's kept connection died with the server; taking the lock reconnects.
    with lock:
        pass
    # The trial's heartbeat is old, but no heartbeat could be recorded while the server was
    # down, so for a grace period after the restart no trial is stale.
    other, other_storage = _worker_storage(url, interval=1, grace=2)
    assert other_storage._get_stale_trial_ids(other._study_id) == []
    time.sleep(2.5)
    assert other_storage._get_stale_trial_ids(other._study_id) == [trial._trial_id]
    lock.close()
