"""The training recipe inside trials: range test per trial, 1-Cycle peak from it, momentum."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import optuna
import pytest
from optuna.trial import TrialState

from tests.support import tiny_study
from tuner.config import DataSettings, TrainSettings, load_study_config
from tuner.data import load_dataset
from tuner.objective import Objective
from tuner.one_cycle import one_cycle_momentum
from tuner.recipe import RANGE_TEST_MIN_STEPS, train_params


@pytest.fixture
def data(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.support import write_csv

    return load_dataset(DataSettings(source=str(write_csv(tmp_path / "d.csv")), target="target"))


PARAMS = {"n_hidden": 1, "n_neurons": 8, "batch_size": 32, "activation": "relu"}


def test_the_range_test_sets_the_one_cycle_peak(data) -> None:  # type: ignore[no-untyped-def]
    settings = TrainSettings(epochs=2, lr_finder=True)
    trained = train_params({**PARAMS, "lr_factor": 0.5}, data, settings, seed=1)
    assert trained.range_test is not None and trained.lr_suggestion is not None
    assert len(trained.range_test.lrs) > 20  # the sweep ran, at least until the loss exploded
    assert trained.lr_suggestion == trained.range_test.suggest("min_div_10")
    assert trained.learning_rate == pytest.approx(0.5 * trained.lr_suggestion)
    # The model trained from the weights it had before the test: a second run agrees.
    again = train_params({**PARAMS, "lr_factor": 0.5}, data, settings, seed=1)
    assert again.history.val_loss == pytest.approx(trained.history.val_loss, rel=1e-4)


def test_the_range_test_is_at_least_the_minimum_length(data) -> None:  # type: ignore[no-untyped-def]
    # 120 training rows at batch 32 are 4 steps an epoch; the sweep still has 100 steps to run.
    settings = TrainSettings(epochs=1, lr_finder=True)
    trained = train_params(PARAMS, data, settings, seed=2)
    assert trained.range_test is not None
    planned_ratio = trained.range_test.lrs[1] / trained.range_test.lrs[0]
    assert planned_ratio == pytest.approx((10.0 / 1e-5) ** (1 / (RANGE_TEST_MIN_STEPS - 1)))


@pytest.mark.parametrize(("optimizer", "attribute"), [("nesterov", "momentum"), ("adam", "beta_1")])
def test_one_cycle_cycles_momentum_inversely(data, optimizer: str, attribute: str) -> None:  # type: ignore[no-untyped-def]
    settings = TrainSettings(epochs=3, early_stopping_patience=10)
    trained = train_params({**PARAMS, "optimizer": optimizer, "learning_rate": 0.01}, data,
                           settings, seed=3)  # fmt: skip
    variable = getattr(trained.model.optimizer, attribute)
    assert isinstance(variable, keras.Variable)
    steps_taken = int(trained.model.optimizer.iterations.numpy())
    assert steps_taken == trained.total_steps
    # The last step set it from the schedule: back up at 0.95 at the end of the cycle.
    expected = one_cycle_momentum(steps_taken - 1, trained.total_steps)
    assert float(variable.numpy()) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.95, abs=1e-3)


def test_momentum_stays_put_when_cycling_is_off(data) -> None:  # type: ignore[no-untyped-def]
    settings = TrainSettings(epochs=2, cycle_momentum=False)
    trained = train_params({**PARAMS, "optimizer": "adam", "learning_rate": 0.01}, data,
                           settings, seed=3)  # fmt: skip
    assert trained.model.optimizer.beta_1 == 0.9


def test_trials_with_the_lr_finder_record_the_suggestion_factor_and_lr(tmp_path: Path) -> None:
    study_file, url = tiny_study(
        tmp_path, n_trials=3, epochs=2, train={"lr_finder": True},
        space={"lr_factor": {"low": 0.3, "high": 3.0, "log": True}, "n_hidden": 1,
               "n_neurons": 8, "batch_size": 32, "activation": "relu",
               "optimizer": {"choices": ["sgd", "nesterov", "adam"]}},
    )  # fmt: skip
    config = load_study_config(study_file)
    study = optuna.create_study(storage=url, study_name="tiny")
    study.optimize(Objective(config), n_trials=3)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
        attrs = trial.user_attrs
        assert attrs["lr_factor"] == trial.params["lr_factor"]
        assert attrs["lr_used"] == pytest.approx(attrs["lr_suggestion"] * attrs["lr_factor"])
        assert set(attrs["lr_suggestions"]) == {"min_div_10", "steepest", "valley"}
        assert attrs["lr_suggestions"]["min_div_10"] == attrs["lr_suggestion"]
        logs = [math.log10(v) for v in attrs["lr_suggestions"].values()]
        assert attrs["lr_spread_decades"] == pytest.approx(max(logs) - min(logs))


def test_a_callback_that_stops_training_still_hands_over_the_epochs_trained(data) -> None:  # type: ignore[no-untyped-def]
    class StopAtEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 2:
                raise optuna.TrialPruned()

    seen: list = []
    with pytest.raises(optuna.TrialPruned):
        train_params(PARAMS, data, TrainSettings(epochs=6), seed=4, callbacks=[StopAtEpoch()],
                     on_abort=seen.append)  # fmt: skip
    [partial] = seen
    assert partial.aborted
    assert partial.history.epochs == 3
    assert all(math.isfinite(v) for v in partial.history.val_loss)


def test_a_pruned_trial_keeps_its_curves_up_to_where_it_was_pruned(tmp_path: Path) -> None:
    from tuner.artifacts import (
        LEARNING_CURVES,
        LR_SCHEDULE,
        TrialArtifacts,
        artifact_store,
        read_trial_table,
    )

    study_file, url = tiny_study(tmp_path, n_trials=1, epochs=8)
    config = load_study_config(study_file)
    # Any validation MSE above zero is pruned once two epochs are in.
    pruner = optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=1)
    study = optuna.create_study(storage=url, study_name="tiny", pruner=pruner)
    study.optimize(Objective(config, after_training=TrialArtifacts(config)), n_trials=1)

    [trial] = study.trials
    assert trial.state == TrialState.PRUNED
    curves = read_trial_table(artifact_store(config), trial, LEARNING_CURVES)
    assert curves is not None and curves["epoch"] == [1.0, 2.0]
    reported = [trial.intermediate_values[0], trial.intermediate_values[1]]
    assert curves["val_mse"] == pytest.approx(reported, rel=1e-6)  # the CSV keeps 7 digits
    assert read_trial_table(artifact_store(config), trial, LR_SCHEDULE) is not None
