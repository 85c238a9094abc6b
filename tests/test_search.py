"""The median pruner's patience: under 1-Cycle it waits for the warm-up to end."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.support import tiny_study
from tuner.config import load_study_config
from tuner.search import make_pruner


def _median_study(folder: Path, epochs: int, schedule: str) -> optuna.Study:
    study_file, _ = tiny_study(
        folder, epochs=epochs, study={"pruner": "median"}, train={"schedule": schedule}
    )
    pruner = make_pruner(load_study_config(study_file))
    study = optuna.create_study(pruner=pruner)
    for _ in range(5):  # the startup trials: good curves for the median
        trial = study.ask()
        for epoch in range(epochs):
            trial.report(0.3, epoch)
        study.tell(trial, 0.3)
    return study


def _first_epoch_pruned(study: optuna.Study, epochs: int) -> int | None:
    """Reports a poor curve; returns the epoch at which the pruner stops it."""
    trial = study.ask()
    for epoch in range(epochs):
        trial.report(1.0, epoch)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return epoch
    study.tell(trial, 1.0)
    return None


@pytest.mark.parametrize(
    ("schedule", "epochs", "first_judged"),
    [
        ("one_cycle", 30, 9),  # the 1-Cycle peak: 30% of the epochs
        ("one_cycle", 10, 3),
        ("constant", 30, 3),
        ("one_cycle", 2, 1),  # never past the last epoch
    ],
)
def test_the_median_pruner_first_judges_a_trial_after_the_warm_up(
    tmp_path: Path, schedule: str, epochs: int, first_judged: int
) -> None:
    study = _median_study(tmp_path, epochs, schedule)
    assert _first_epoch_pruned(study, epochs) == first_judged
