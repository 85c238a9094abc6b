"""The study's trial budget: ``n_trials`` in total, however many workers share it.

A worker may start a new trial only while the trials that count toward the budget are fewer
than ``n_trials``, and it checks and creates under the study lock, so the study ends with
exactly ``n_trials`` trials. Queued trials (retries of trials whose worker died) run first
and replace the trial they retry: a failed trial that was retried no longer counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "BudgetExhausted",
    "count_rows",
    "count_toward_budget",
    "remaining",
    "superseded_numbers",
]


class BudgetExhausted(Exception):
    """The study already has as many trials as its budget allows."""


def superseded_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that were queued again, so that a retry replaced them.

    Optuna's ``RetryHeartbeatStaleTrialCallback`` writes the chain of retried trial numbers
    into each retry's ``retry_history`` system attribute; tuner does the same for trials
    interrupted by a signal.
    """
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(int(n) for n in trial.system_attrs.get("retry_history", ()))
    return numbers


def count_toward_budget(trials: Iterable[FrozenTrial]) -> int:
    """How many of ``trials`` use up the budget: all but failed trials that were retried."""
    trials = list(trials)
    return count_rows(
        [(t.number, t.state) for t in trials],
        [t.system_attrs.get("retry_history", ()) for t in trials],
    )


def count_rows(
    states: Iterable[tuple[int, TrialState]], retry_histories: Iterable[Iterable[int]]
) -> int:
    """:func:`count_toward_budget` from database rows: (number, state) pairs and histories."""
    superseded = {int(n) for history in retry_histories for n in history}
    return sum(1 for number, s in states if not (s == TrialState.FAIL and number in superseded))


def remaining(trials: Iterable[FrozenTrial], n_trials: int) -> int:
    """How many more trials may start before the budget is used up."""
    return max(0, n_trials - count_toward_budget(trials))
