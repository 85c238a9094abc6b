"""The storage a worker uses: Optuna's RDB storage, with the running trial's writes batched.

Optuna's ``RDBStorage`` commits every write on its own: about 2 ms for each parameter,
reported epoch and attribute, and a ``should_prune`` re-reads the unfinished trials each time.
For trials of a second or two that is several percent of the worker's time. This wrapper
keeps the writes to the trial this process runs in memory and commits them together: with
every heartbeat (so the dashboard sees live learning curves) and when the trial finishes, in
the same transaction as its final state. Other trials are read at most every ``read_ttl``
seconds; pruners and samplers do not need them fresher. Everything else goes straight to the
database, with retries through connection faults.

It also starts trials within the study's budget: see :mod:`tuner.budget`.

Only the process running a trial writes its reports and attributes, so holding them back
changes no one else's view except by delay. If the worker dies, the writes since the last
heartbeat are lost with the trial, which the heartbeat then fails and retries. Parameters
are the exception: they are written as they are drawn, since the retry runs them again.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.orm
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
)
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from tuner.budget import BudgetExhausted, count_rows
from tuner.interrupts import deferred
from tuner.retry import MAX_DELAY_SECONDS, is_transient, retry_transient
from tuner.study_lock import StudyLock

__all__ = ["BufferedStorage"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

# Pruners read the finished trials every epoch and samplers before every draw; a refresh costs
# about 10 ms here, and a median over trials a few seconds older decides the same.
DEFAULT_READ_TTL_SECONDS = 30.0


@dataclass
class _OwnedTrial:
    """A running trial of this process, as it stands in memory."""

    base: FrozenTrial
    study_id: int | None
    params: dict[str, float] = field(default_factory=dict)
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    # What is not in the database yet.
    new_params: set[str] = field(default_factory=set)
    new_steps: set[int] = field(default_factory=set)
    new_user_attrs: set[str] = field(default_factory=set)
    new_system_attrs: set[str] = field(default_factory=set)
    # Commits tried so far: before the first, nothing of this trial's can be stored but what
    # it was created with, so the commit need not look for rows a lost attempt left.
    commit_attempts: int = 0
    # frozen() for the running trial, rebuilt after each change: pruners ask every epoch.
    cached: FrozenTrial | None = None

    @classmethod
    def from_frozen(cls, trial: FrozenTrial, study_id: int | None) -> _OwnedTrial:
        return cls(
            base=trial,
            study_id=study_id,
            params={n: trial.distributions[n].to_internal_repr(v) for n, v in trial.params.items()},
            distributions=dict(trial.distributions),
            intermediate=dict(trial.intermediate_values),
            user_attrs=dict(trial.user_attrs),
            system_attrs=dict(trial.system_attrs),
        )

    def changed(self) -> None:
        self.cached = None

    def running(self) -> FrozenTrial:
        """The trial as it stands, shared between calls until it changes: do not modify."""
        if self.cached is None:
            self.cached = self.frozen()
        return self.cached

    def frozen(
        self,
        state: TrialState = TrialState.RUNNING,
        values: Sequence[float] | None = None,
        datetime_complete: datetime.datetime | None = None,
    ) -> FrozenTrial:
        return FrozenTrial(
            number=self.base.number,
            state=state,
            value=None,
            values=values,
            datetime_start=self.base.datetime_start,
            datetime_complete=datetime_complete,
            params={n: self.distributions[n].to_external_repr(v) for n, v in self.params.items()},
            distributions=dict(self.distributions),
            user_attrs=copy.deepcopy(self.user_attrs),
            system_attrs=copy.deepcopy(self.system_attrs),
            intermediate_values=dict(self.intermediate),
            trial_id=self.base._trial_id,
        )

    def has_pending(self) -> bool:
        return bool(
            self.new_params or self.new_steps or self.new_user_attrs or self.new_system_attrs
        )


class BufferedStorage(BaseStorage, BaseHeartbeat):
    """Optuna storage for worker processes; see the module docstring.

    Args:
        backend: The RDB storage, with heartbeats configured.
        lock: The study's cross-process lock.
        n_trials: The study's budget; new trials beyond it raise :class:`BudgetExhausted`.
            None means no budget.
        read_ttl: Seconds for which other trials may be served from memory. Defaults to 30.
    """

    def __init__(
        self,
        backend: RDBStorage,
        lock: StudyLock,
        n_trials: int | None,
        read_ttl: float = DEFAULT_READ_TTL_SECONDS,
    ) -> None:
        self._backend = backend
        self._inner = optuna.storages.get_storage(backend)  # Optuna's cache of finished trials
        self._lock = lock
        self._n_trials = n_trials
        self._read_ttl = read_ttl
        self._owned: dict[int, _OwnedTrial] = {}
        self._finished: dict[int, FrozenTrial] = {}
        self._snapshot: dict[int, tuple[float, list[FrozenTrial]]] = {}
        self._study_of: dict[int, int] = {}  # trial ID -> study ID, for trials seen so far
        self._last_finished: FrozenTrial | None = None
        self._mutex = threading.RLock()
        self._last_outage: float | None = None  # monotonic time of the last lost connection
        self._heartbeat_failing = False
        self._last_stale_check = -math.inf

    @property
    def backend(self) -> RDBStorage:
        """The wrapped RDB storage."""
        return self._backend

    def _db(self, what: str, call: Callable[[], T]) -> T:
        def attempt() -> T:
            try:
                return call()
            except Exception as e:
                self._note_outage(e)
                raise

        # After an outage, every call that waited must be through within a heartbeat
        # interval of the database's return, before the others' stale-trial checks resume.
        interval = self._backend.get_heartbeat_interval()
        max_delay = min(MAX_DELAY_SECONDS, interval) if interval else MAX_DELAY_SECONDS
        return retry_transient(attempt, what=what, max_delay=max_delay)

    def _note_outage(self, error: BaseException) -> None:
        if is_transient(error):
            self._last_outage = time.monotonic()

    # Studies: straight through.

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self._db(
            "create the study", lambda: self._inner.create_new_study(directions, study_name)
        )

    def delete_study(self, study_id: int) -> None:
        self._db("delete the study", lambda: self._inner.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._db(
            "write a study attribute", lambda: self._inner.set_study_user_attr(study_id, key, value)
        )

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._db(
            "write a study attribute",
            lambda: self._inner.set_study_system_attr(study_id, key, value),
        )

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._db("read the study", lambda: self._inner.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._db("read the study", lambda: self._inner.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._db("read the study", lambda: self._inner.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._db("read the study", lambda: self._inner.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._db("read the study", lambda: self._inner.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._db("list studies", self._inner.get_all_studies)

    # Starting trials: within the budget, under the study lock.

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None:
            # Queued and retried trials: they do not start now, so they need no budget check.
            return self._db(
                "queue a trial", lambda: self._inner.create_new_trial(study_id, template_trial)
            )
        return self._db("start a trial", lambda: self._start_new_trial(study_id))

    def _start_new_trial(self, study_id: int) -> int:
        with deferred(), self._lock:
            if self._n_trials is not None and self._budget_used(study_id) >= self._n_trials:
                raise BudgetExhausted(f"the study has its {self._n_trials} trials.")
            # The RDB storage's own creator returns the new trial, which saves reading it back;
            # Optuna's cache finds it by ID on its next read.
            frozen = self._backend._create_new_trial(study_id)
            with self._mutex:
                self._owned[frozen._trial_id] = _OwnedTrial.from_frozen(frozen, study_id)
                self._study_of[frozen._trial_id] = study_id
        return frozen._trial_id

    def _budget_used(self, study_id: int) -> int:
        """Counts the trials that use budget with two small queries, not a read of all trials."""
        trial = models.TrialModel
        attribute = models.TrialSystemAttributeModel
        session = self._backend.scoped_session()
        try:
            states = session.query(trial.number, trial.state).filter(trial.study_id == study_id)
            histories = (
                session.query(attribute.value_json)
                .join(trial, trial.trial_id == attribute.trial_id)
                .filter(trial.study_id == study_id, attribute.key == "retry_history")
            )
            return count_rows(
                [(number, state) for number, state in states],
                [json.loads(value) for (value,) in histories],
            )
        finally:
            session.rollback()
            self._backend.scoped_session.remove()

    def _own(self, trial_id: int, study_id: int | None) -> None:
        frozen = self._inner.get_trial(trial_id)
        with self._mutex:
            self._owned[trial_id] = _OwnedTrial.from_frozen(frozen, study_id)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        with self._mutex:
            owned = self._owned.get(trial_id)
        if owned is not None:
            if state == TrialState.RUNNING:
                return False
            if state.is_finished():
                try:
                    self._db("finish the trial", lambda: self._flush(owned, state, values))
                except UpdateFinishedTrialError as e:
                    self._forget_lost(owned, str(e))
                    return False
                return True
        if state == TrialState.RUNNING:
            return self._db("take a queued trial", lambda: self._take_waiting(trial_id))
        return self._db(
            "update a trial", lambda: self._inner.set_trial_state_values(trial_id, state, values)
        )

    def _forget_lost(self, owned: _OwnedTrial, reason: str) -> None:
        # Its heartbeat stopped long enough for another worker to fail it and queue it again
        # (this process stalled, or lost the database for longer than the grace period). The
        # retry counts instead; the worker goes on with the database's version of the trial.
        _logger.warning("%s", reason)
        trial_id = owned.base._trial_id
        stored = self._db("read a trial", lambda: self._inner.get_trial(trial_id))
        with self._mutex:
            self._owned.pop(trial_id, None)
            self._finished[trial_id] = stored
            self._last_finished = stored
            if owned.study_id is not None:
                self._study_of[trial_id] = owned.study_id

    def _take_waiting(self, trial_id: int) -> bool:
        # SQLite cannot lock the row, so two workers could both see it WAITING; the study lock
        # makes the check and the update one step.
        with deferred(), self._lock:
            taken = self._inner.set_trial_state_values(trial_id, TrialState.RUNNING)
            if taken:
                self._own(trial_id, self._study_of.get(trial_id))
        return taken

    # Writes to this process's running trial: kept in memory until the next flush.

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        owned = self._owned_or_none(trial_id)
        if owned is None:
            self._db(
                "write a parameter",
                lambda: self._inner.set_trial_param(
                    trial_id, param_name, param_value_internal, distribution
                ),
            )
            return
        known = self._known_distribution(owned, param_name)
        if known is not None:
            check_distribution_compatibility(known, distribution)
        # Buffered only until the trial's first report (or heartbeat), which writes them all
        # in one transaction: a retry of a trial whose worker died must find its parameters.
        with self._mutex:
            owned.params[param_name] = param_value_internal
            owned.distributions[param_name] = distribution
            owned.new_params.add(param_name)
            owned.changed()

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        owned = self._owned_or_none(trial_id)
        if owned is None:
            self._db(
                "report a value",
                lambda: self._inner.set_trial_intermediate_value(
                    trial_id, step, intermediate_value
                ),
            )
            return
        with self._mutex:
            owned.intermediate[step] = intermediate_value
            owned.new_steps.add(step)
            owned.changed()
            params_pending = bool(owned.new_params)
        if params_pending:
            self.flush(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        owned = self._owned_or_none(trial_id)
        if owned is None:
            self._db(
                "write an attribute", lambda: self._inner.set_trial_user_attr(trial_id, key, value)
            )
            return
        json.dumps(value)  # Fail now, in the trial, rather than at the flush.
        with self._mutex:
            owned.user_attrs[key] = copy.deepcopy(value)
            owned.new_user_attrs.add(key)
            owned.changed()

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        owned = self._owned_or_none(trial_id)
        if owned is None:
            self._db(
                "write an attribute",
                lambda: self._inner.set_trial_system_attr(trial_id, key, value),
            )
            return
        json.dumps(value)
        with self._mutex:
            owned.system_attrs[key] = copy.deepcopy(value)
            owned.new_system_attrs.add(key)
            owned.changed()

    def _owned_or_none(self, trial_id: int) -> _OwnedTrial | None:
        with self._mutex:
            return self._owned.get(trial_id)

    def _known_distribution(self, owned: _OwnedTrial, name: str) -> BaseDistribution | None:
        if owned.study_id is None:
            return None
        for other in self._trials(owned.study_id):
            if name in other.distributions and other._trial_id != owned.base._trial_id:
                return other.distributions[name]
        return None

    # Reads.

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._db(
            "read a trial",
            lambda: self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number),
        )

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._mutex:
            owned = self._owned.get(trial_id)
            if owned is not None:
                return copy.copy(owned.running())
            finished = self._finished.get(trial_id)
            if finished is not None:
                return copy.deepcopy(finished)
        return self._db("read a trial", lambda: self._inner.get_trial(trial_id))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        if isinstance(states, tuple | list | set) and tuple(states) == (TrialState.WAITING,):
            # The queue must be read fresh, or a worker could miss a retried trial; it is
            # usually empty, so ask for IDs first.
            return self._db("read the queue", lambda: self._waiting_trials(study_id))
        # Who is running right now decides whether a worker may stop, so it is read fresh
        # too; finished trials, which pruners and samplers read, may be a few seconds old.
        fresh = states is not None and TrialState.RUNNING in states
        trials = self._trials(study_id, fresh=fresh)
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _waiting_trials(self, study_id: int) -> list[FrozenTrial]:
        session = self._backend.scoped_session()
        try:
            ids = [
                trial_id
                for (trial_id,) in session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == TrialState.WAITING)
                .order_by(models.TrialModel.number)
            ]
        finally:
            session.rollback()
            self._backend.scoped_session.remove()
        trials = [self._inner.get_trial(trial_id) for trial_id in ids]
        with self._mutex:
            for trial in trials:
                self._study_of[trial._trial_id] = study_id
        return [t for t in trials if t.state == TrialState.WAITING]

    def _trials(self, study_id: int, fresh: bool = False) -> list[FrozenTrial]:
        now = time.monotonic()
        cached = self._snapshot.get(study_id)
        if fresh or cached is None or now - cached[0] > self._read_ttl:
            trials = self._db(
                "read trials", lambda: self._inner.get_all_trials(study_id, deepcopy=False)
            )
            self._snapshot[study_id] = (now, trials)
            with self._mutex:
                for trial in trials:
                    self._study_of[trial._trial_id] = study_id
                    # The database has caught up with trials this process finished.
                    if trial.state.is_finished():
                        self._finished.pop(trial._trial_id, None)
        else:
            trials = cached[1]
        with self._mutex:
            local = {tid: o.running() for tid, o in self._owned.items() if o.study_id == study_id}
            local.update(
                (tid, t) for tid, t in self._finished.items() if self._study_of.get(tid) == study_id
            )
        if not local:
            return list(trials)
        merged = {t._trial_id: t for t in trials}
        merged.update(local)
        return sorted(merged.values(), key=lambda t: t.number)

    # Committing the buffer.

    def flush(self, trial_id: int) -> None:
        """Commits what is buffered for a running trial of this process, if anything."""
        owned = self._owned_or_none(trial_id)
        if owned is not None and owned.has_pending():
            self._db("save trial progress", lambda: self._flush(owned))

    def _flush(
        self,
        owned: _OwnedTrial,
        state: TrialState | None = None,
        values: Sequence[float] | None = None,
    ) -> None:
        trial_id = owned.base._trial_id
        with self._mutex:
            params = {n: (owned.params[n], owned.distributions[n]) for n in owned.new_params}
            steps = {s: owned.intermediate[s] for s in owned.new_steps}
            user_attrs = {k: owned.user_attrs[k] for k in owned.new_user_attrs}
            system_attrs = {k: owned.system_attrs[k] for k in owned.new_system_attrs}
        completed_at = datetime.datetime.now()
        with deferred():
            self._commit(
                owned, params, steps, user_attrs, system_attrs, state, values, completed_at
            )
        with self._mutex:
            owned.new_params.difference_update(params)
            owned.new_steps.difference_update(steps)
            owned.new_user_attrs.difference_update(user_attrs)
            owned.new_system_attrs.difference_update(system_attrs)
            if state is not None:
                self._owned.pop(trial_id, None)
                self._finished[trial_id] = owned.frozen(state, values, completed_at)
                self._last_finished = self._finished[trial_id]
                if owned.study_id is not None:
                    self._study_of[trial_id] = owned.study_id

    def _commit(
        self,
        owned: _OwnedTrial,
        params: dict[str, tuple[float, BaseDistribution]],
        steps: dict[int, float],
        user_attrs: dict[str, Any],
        system_attrs: dict[str, Any],
        state: TrialState | None,
        values: Sequence[float] | None,
        completed_at: datetime.datetime,
    ) -> None:
        trial_id = owned.base._trial_id
        # Rows that an earlier attempt may have stored (its acknowledgement lost with the
        # connection) are looked for, and skipped or updated; before any attempt, only the
        # attributes the trial was created with (a retry's) can be there.
        careful = owned.commit_attempts > 0
        owned.commit_attempts += 1
        stored_user = set(owned.base.user_attrs)
        stored_system = set(owned.base.system_attrs)
        # The table, not the model: bulk statements cost less than the ORM's unit of work,
        # and the model maps datetime_complete to a private attribute.
        trials = models.TrialModel.__table__
        session = self._backend.scoped_session()
        try:
            stored_state = session.execute(
                sqlalchemy.select(trials.c.state, trials.c.number)
                .where(trials.c.trial_id == trial_id)
                .with_for_update()
            ).one_or_none()
            if stored_state is None:
                raise KeyError(f"No trial with trial_id {trial_id} exists.")
            stored, number = stored_state
            if stored.is_finished():
                session.rollback()
                if state is not None and stored == state:
                    return  # Our earlier commit went through before the connection dropped.
                raise UpdateFinishedTrialError(
                    f"Trial#{number} is already {stored.name}: another worker "
                    f"declared it stale, so this worker's results for it are dropped."
                )
            _add_params(session, trial_id, params, careful)
            _add_intermediate_values(session, trial_id, steps, careful)
            _upsert_attrs(
                session,
                models.TrialUserAttributeModel,
                trial_id,
                user_attrs,
                None if careful else stored_user,
            )
            _upsert_attrs(
                session,
                models.TrialSystemAttributeModel,
                trial_id,
                system_attrs,
                None if careful else stored_system,
            )
            if state is not None:
                if values:
                    rows = []
                    for objective, value in enumerate(values):
                        stored_value, value_type = models.TrialValueModel.value_to_stored_repr(
                            value
                        )
                        rows.append(
                            {
                                "trial_id": trial_id,
                                "objective": objective,
                                "value": stored_value,
                                "value_type": value_type,
                            }
                        )
                    session.execute(sqlalchemy.insert(models.TrialValueModel), rows)
                # Naive UTC, as the model's setter would store it.
                completed_utc = completed_at.astimezone(datetime.UTC).replace(tzinfo=None)
                session.execute(
                    sqlalchemy.update(trials)
                    .where(trials.c.trial_id == trial_id)
                    .values(state=state, datetime_complete=completed_utc)
                )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            self._backend.scoped_session.remove()

    def abandon(
        self, state: TrialState = TrialState.FAIL, user_attrs: dict[str, Any] | None = None
    ) -> list[FrozenTrial]:
        """Finishes every running trial of this process as ``state``; returns them.

        For a worker that is stopping in the middle of a trial.

        Args:
            state: The state to finish them in. Defaults to FAIL.
            user_attrs: Attributes to record on each, e.g. why it stopped.
        """
        with self._mutex:
            owned = list(self._owned.values())
            for trial in owned:
                for key, value in (user_attrs or {}).items():
                    trial.user_attrs[key] = value
                    trial.new_user_attrs.add(key)
        finished = []
        for trial in owned:
            try:
                self._db("finish the trial", functools.partial(self._flush, trial, state))
            except UpdateFinishedTrialError:
                continue
            finished.append(self.get_trial(trial.base._trial_id))
        return finished

    def last_finished(self) -> FrozenTrial | None:
        """The trial this process finished last, as it was written."""
        with self._mutex:
            return copy.deepcopy(self._last_finished)

    # Heartbeats: each also commits the running trial's progress.

    def record_heartbeat(self, trial_id: int) -> None:
        """Commits the trial's progress and its heartbeat; never raises.

        Optuna calls this from a thread that dies on the first exception, after which the
        trial would go stale while it still runs. So there is one attempt per beat, no
        waiting: the next beat is the retry, and the trial's end is never held up by one.
        """
        try:
            owned = self._owned_or_none(trial_id)
            if owned is not None and owned.has_pending():
                self._flush(owned)
            self._backend.record_heartbeat(trial_id)
        except UpdateFinishedTrialError:
            pass
        except Exception as e:
            self._note_outage(e)
            # Once per outage: the thread tries again every interval.
            log = _logger.debug if self._heartbeat_failing else _logger.warning
            log("Heartbeat of trial ID %d not recorded: %s", trial_id, _first_line(e))
            self._heartbeat_failing = True
        else:
            if self._heartbeat_failing:
                _logger.info("Heartbeats reach the database again.")
                self._heartbeat_failing = False

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna asks before every trial; a trial cannot go stale faster than the heartbeat
        # interval, so asking more often only costs a query per trial.
        now = time.monotonic()
        interval = float(self._backend.get_heartbeat_interval() or 0)
        if now - self._last_stale_check < interval:
            return []
        self._last_stale_check = now
        grace = self._grace_period()
        if self._last_outage is not None and time.monotonic() - self._last_outage < grace:
            # The other workers' heartbeats could not reach the database either.
            return []
        stale = self._db("look for stale trials", lambda: self._find_stale(study_id, grace))
        with self._mutex:
            return [t for t in stale if t not in self._owned]

    def _grace_period(self) -> float:
        interval = self._backend.get_heartbeat_interval() or 0
        return float(self._backend.grace_period or 2 * interval)

    def _find_stale(self, study_id: int, grace: float) -> list[int]:
        """Optuna's stale-trial query, made safe for two cases it misses.

        A trial whose worker died before its first heartbeat has no heartbeat row, and Optuna
        never finds it stale: it would stay RUNNING forever. Such trials get a heartbeat row
        now, so that they go stale after the grace period unless their worker beats.
        And no heartbeat can be recorded while a server is down: for a grace period after a
        PostgreSQL server (re)started, no trial is stale.
        """
        session = self._backend.scoped_session()
        try:
            now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
            if session.get_bind().dialect.name == "postgresql":
                started = session.execute(
                    sqlalchemy.text("SELECT pg_postmaster_start_time()")
                ).scalar_one()
                if now - started < datetime.timedelta(seconds=grace):
                    session.rollback()
                    return []
            now = now.replace(tzinfo=None)
            running = (
                session.query(models.TrialModel)
                .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            stale = []
            with self._mutex:
                owned = set(self._owned)
            for trial in running:
                if not trial.heartbeats:
                    if trial.trial_id not in owned:
                        session.add(models.TrialHeartbeatModel(trial_id=trial.trial_id))
                elif now - trial.heartbeats[0].heartbeat > datetime.timedelta(seconds=grace):
                    stale.append(trial.trial_id)
            session.commit()
        except sqlalchemy.exc.IntegrityError:
            # Its worker's first heartbeat came at the same moment: it is alive.
            session.rollback()
            return []
        except BaseException:
            session.rollback()
            raise
        finally:
            self._backend.scoped_session.remove()
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._backend.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._backend.get_heartbeat_stale_trial_callback()

    def remove_session(self) -> None:
        self._backend.remove_session()


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error.__cause__ or error
    return str(original).strip().split("\n", 1)[0] or type(original).__name__


# A commit whose acknowledgement was lost (the server went down at that moment) is retried,
# so each write below skips or updates the rows that the first attempt may have stored.


def _add_params(
    session: Any, trial_id: int, params: dict[str, tuple[float, BaseDistribution]], careful: bool
) -> None:
    # The checks of RDBStorage.set_trial_param (compatible distribution, a running trial) were
    # made when the value was drawn, or hold because this process owns the trial.
    model = models.TrialParamModel
    stored: set[str] = set()
    if careful and params:
        query = sqlalchemy.select(model.param_name).where(model.trial_id == trial_id)
        stored = set(session.execute(query).scalars())
    rows = [
        {
            "trial_id": trial_id,
            "param_name": name,
            "param_value": value,
            "distribution_json": distribution_to_json(distribution),
        }
        for name, (value, distribution) in params.items()
        if name not in stored
    ]
    if rows:
        session.execute(sqlalchemy.insert(model), rows)


def _add_intermediate_values(
    session: Any, trial_id: int, steps: dict[int, float], careful: bool
) -> None:
    # Optuna's Trial.report ignores a step reported twice, so a stored step holds this value.
    model = models.TrialIntermediateValueModel
    stored_steps: set[int] = set()
    if careful and steps:
        query = sqlalchemy.select(model.step).where(model.trial_id == trial_id)
        stored_steps = set(session.execute(query).scalars())
    rows = []
    for step, value in steps.items():
        if step not in stored_steps:
            stored, value_type = model.intermediate_value_to_stored_repr(value)
            rows.append(
                {
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": stored,
                    "intermediate_value_type": value_type,
                }
            )
    if rows:
        session.execute(sqlalchemy.insert(model), rows)


def _upsert_attrs(
    session: Any,
    model: type[models.TrialUserAttributeModel] | type[models.TrialSystemAttributeModel],
    trial_id: int,
    attrs: dict[str, Any],
    maybe_stored: set[str] | None,
) -> None:
    """Inserts or updates attributes; only keys in ``maybe_stored`` are looked up (all if None)."""
    if not attrs:
        return
    lookup = list(attrs) if maybe_stored is None else [k for k in attrs if k in maybe_stored]
    stored: set[str] = set()
    if lookup:
        query = sqlalchemy.select(model.key).where(
            model.trial_id == trial_id, model.key.in_(lookup)
        )
        stored = set(session.execute(query).scalars())
    new = [
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
        for key, value in attrs.items()
        if key not in stored
    ]
    if new:
        session.execute(sqlalchemy.insert(model), new)
    for key in stored:
        session.execute(
            sqlalchemy.update(model)
            .where(model.trial_id == trial_id, model.key == key)
            .values(value_json=json.dumps(attrs[key]))
        )
