"""The reference notebook's last steps, on a tuned study.

- :func:`train_best` trains the best trial's hyperparameters with 1-Cycle, keeps the
  best-validation checkpoint, scores it on the test set and saves a ``.keras`` model that
  takes raw (unscaled) features.
- :func:`compare_schedules` trains them twice, with a fixed LR and with 1-Cycle, and scores
  both on the test set.
- :func:`find_lr` runs the LR range test on the study's data and model.

Each records its result in the study (user attributes), where ``tuner report`` finds it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
from optuna.trial import TrialState

from tuner.config import DEFAULT_PARAMS, StudyConfig
from tuner.data import Dataset
from tuner.lr_finder import RangeTestResult, range_test
from tuner.model import build_model
from tuner.recipe import TrainedModel, train_params
from tuner.search import trial_seed
from tuner.study import best_trial
from tuner.training import TrainingDivergedError

__all__ = [
    "Comparison",
    "FinalModel",
    "best_trial",
    "compare_schedules",
    "evaluate",
    "find_lr",
    "train_best",
]

FINAL_MODEL_ATTR = "final_model"
COMPARISON_ATTR = "schedule_comparison"
LR_FIND_ATTR = "lr_find"

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalModel:
    """The model trained from the best trial.

    Attributes:
        path: Where the ``.keras`` model was saved.
        trial_number: The best trial it was trained from.
        params: Its hyperparameters.
        test_mse: Test MSE of the best-validation checkpoint.
        test_mae: Test MAE of the same.
        val_mse: Validation MSE of the same.
        epochs: Epochs trained before early stopping.
    """

    path: Path
    trial_number: int
    params: dict[str, Any]
    test_mse: float
    test_mae: float
    val_mse: float
    epochs: int


@dataclass(frozen=True)
class Comparison:
    """Fixed LR against 1-Cycle, same hyperparameters, same seed.

    Attributes:
        learning_rate: The fixed LR, which is also the 1-Cycle peak.
        fixed_val_loss: Validation MSE per epoch with the fixed LR.
        one_cycle_val_loss: Validation MSE per epoch with 1-Cycle.
        fixed_test_mse: Test MSE with the fixed LR; None if that run diverged.
        one_cycle_test_mse: Test MSE with 1-Cycle; None if that run diverged.
        fixed_diverged: How the fixed-LR run diverged, if it did.
        one_cycle_diverged: How the 1-Cycle run diverged, if it did.
    """

    learning_rate: float
    fixed_val_loss: list[float]
    one_cycle_val_loss: list[float]
    fixed_test_mse: float | None
    one_cycle_test_mse: float | None
    fixed_diverged: str | None = None
    one_cycle_diverged: str | None = None

    @property
    def improvement_percent(self) -> float | None:
        """How much lower 1-Cycle's test MSE is, in percent of the fixed LR's; None if a
        run diverged."""
        if self.fixed_test_mse is None or self.one_cycle_test_mse is None:
            return None
        return 100.0 * (self.fixed_test_mse - self.one_cycle_test_mse) / self.fixed_test_mse


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Returns the model's MSE and MAE on ``(x, y)``."""
    prediction = model.predict(x, batch_size=4096, verbose=0).reshape(-1)
    error = prediction.astype(np.float64) - np.asarray(y, np.float64).reshape(-1)
    return float(np.mean(error**2)), float(np.mean(np.abs(error)))


def train_best(
    study: optuna.Study,
    config: StudyConfig,
    data: Dataset,
    output: Path,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FinalModel:
    """Trains the best trial's hyperparameters with 1-Cycle and saves the result.

    Args:
        study: The tuned study.
        config: Its configuration.
        data: Its data.
        output: Where to save the ``.keras`` model.
        callbacks: Extra Keras callbacks (epoch granularity), e.g. the CLI's progress.

    Returns:
        The final model's record, which is also stored in the study.
    """
    trial = best_trial(study)
    params = dict(trial.params)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint_path = Path(folder) / "best.weights.h5"
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(checkpoint_path), monitor="val_loss", save_best_only=True, save_weights_only=True
        )
        trained = train_params(
            params,
            data,
            config.train,
            seed=trial_seed(config.study.seed, trial.number),
            schedule="one_cycle",
            callbacks=[checkpoint, *callbacks],
        )
        trained.model.load_weights(str(checkpoint_path))
    test_mse, test_mae = evaluate(trained.model, data.x_test, data.y_test)
    val_mse, _ = evaluate(trained.model, data.x_valid, data.y_valid)
    output.parent.mkdir(parents=True, exist_ok=True)
    with_scaling(trained, data).save(output)
    final = FinalModel(
        path=output,
        trial_number=trial.number,
        params=params,
        test_mse=test_mse,
        test_mae=test_mae,
        val_mse=val_mse,
        epochs=trained.history.epochs,
    )
    study.set_user_attr(
        FINAL_MODEL_ATTR,
        {
            "path": str(output),
            "trial_number": trial.number,
            "params": params,
            "test_mse": test_mse,
            "test_mae": test_mae,
            "val_mse": val_mse,
            "epochs": final.epochs,
        },
    )
    return final


def with_scaling(trained: TrainedModel, data: Dataset) -> keras.Model:
    """The trained model behind a ``Normalization`` layer, so it takes raw features."""
    layers: list[Any] = [
        keras.Input(shape=data.input_shape),
        keras.layers.Normalization(mean=data.feature_mean, variance=np.square(data.feature_scale)),
        *trained.model.layers,
    ]
    model = keras.Sequential(layers, name="tuned_model")
    model.compile(loss="mse", metrics=["mae"])
    return model


def compare_schedules(
    study: optuna.Study,
    config: StudyConfig,
    data: Dataset,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> Comparison:
    """Trains the best hyperparameters with a fixed LR and with 1-Cycle; scores both.

    The fixed LR is the best trial's LR; 1-Cycle peaks at the same value. ``callbacks`` (Keras,
    epoch granularity) see both runs, the fixed LR first. A peak that 1-Cycle's warm-up
    tolerates can make a fixed LR diverge: that run then keeps its curve up to there and has
    no test score.
    """
    trial = best_trial(study)
    seed = trial_seed(config.study.seed, trial.number)
    fixed, cycled = (
        _train_to_compare(trial.params, data, config, seed, schedule, callbacks)
        for schedule in ("constant", "one_cycle")
    )
    comparison = Comparison(
        learning_rate=fixed.trained.learning_rate,
        fixed_val_loss=fixed.trained.history.val_loss,
        one_cycle_val_loss=cycled.trained.history.val_loss,
        fixed_test_mse=fixed.test_mse(data),
        one_cycle_test_mse=cycled.test_mse(data),
        fixed_diverged=fixed.diverged,
        one_cycle_diverged=cycled.diverged,
    )
    study.set_user_attr(COMPARISON_ATTR, dataclasses.asdict(comparison))
    return comparison


@dataclass
class _Run:
    trained: TrainedModel
    diverged: str | None

    def test_mse(self, data: Dataset) -> float | None:
        if self.diverged is not None:
            return None
        return evaluate(self.trained.model, data.x_test, data.y_test)[0]


def _train_to_compare(
    params: dict[str, Any],
    data: Dataset,
    config: StudyConfig,
    seed: int,
    schedule: str,
    callbacks: Sequence[keras.callbacks.Callback],
) -> _Run:
    partial: list[TrainedModel] = []
    try:
        trained = train_params(
            params,
            data,
            config.train,
            seed=seed,
            schedule=schedule,
            callbacks=callbacks,
            on_abort=partial.append,
        )
    except TrainingDivergedError as e:
        _logger.info("The %s run diverged: %s", schedule, e)
        return _Run(partial[0], diverged=str(e))
    return _Run(trained, diverged=None)


def find_lr(
    config: StudyConfig, data: Dataset, params: dict[str, Any], seed: int
) -> RangeTestResult:
    """Runs the LR range test on a model built from ``params``."""
    p = {**DEFAULT_PARAMS, **params}
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
    model = build_model(
        p["n_hidden"],
        p["n_neurons"],
        DEFAULT_PARAMS["learning_rate"],
        p["activation"],
        data.input_shape,
        optimizer=str(p.get("optimizer", "sgd")),
    )
    batch_size = int(p["batch_size"])
    steps = max(100, math.ceil(len(data.y_train) / batch_size))
    return range_test(
        model, data.x_train, data.y_train, batch_size=batch_size, steps=steps, seed=seed
    )


def lr_find_params(study: optuna.Study | None, config: StudyConfig) -> dict[str, Any]:
    """The hyperparameters to range-test: the best trial's, else the fixed ones and defaults."""
    if study is not None and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return dict(study.best_trial.params)
    from optuna.distributions import CategoricalDistribution

    fixed = {
        name: d.choices[0]
        for name, d in config.space.items()
        if isinstance(d, CategoricalDistribution) and len(d.choices) == 1
    }
    return {**DEFAULT_PARAMS, **fixed}
