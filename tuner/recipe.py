"""How one set of hyperparameters is trained: the reference notebook's recipe.

Build the model, optionally set the peak LR from a range test, train with 1-Cycle (or a
constant LR) and early stopping that restores the best weights. Tuning trials, the final
model and the fixed-vs-1-Cycle comparison all train this way, so their numbers compare.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from tuner.config import DEFAULT_PARAMS, TrainSettings
from tuner.data import Dataset
from tuner.lr_finder import RangeTestResult, range_test
from tuner.model import build_model
from tuner.one_cycle import OneCycleMomentum, OneCycleSchedule
from tuner.training import TrainingHistory, fit

__all__ = ["TrainedModel", "train_params"]

RANGE_TEST_MIN_STEPS = 100

_logger = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A model trained by :func:`train_params`, and how it got there.

    Attributes:
        model: The model, with its best-validation weights.
        history: Per-epoch losses.
        learning_rate: The LR used: the 1-Cycle peak, or the constant LR.
        range_test: The range test's curve, when the LR finder ran.
        lr_suggestion: The range test's suggestion, when the LR finder ran.
        total_steps: The steps the schedule was laid out for (epochs x steps per epoch).
        aborted: Training raised before its end (a pruned or diverged trial); ``history``
            holds the epochs before that.
    """

    model: keras.Model
    history: TrainingHistory
    learning_rate: float
    range_test: RangeTestResult | None
    lr_suggestion: float | None
    total_steps: int
    aborted: bool = False


def train_params(
    params: Mapping[str, Any],
    data: Dataset,
    settings: TrainSettings,
    *,
    seed: int,
    schedule: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    on_abort: Callable[[TrainedModel], None] | None = None,
) -> TrainedModel:
    """Trains the model that ``params`` describe, on ``data``'s training split.

    Args:
        params: Hyperparameters; missing ones take the notebook's defaults.
        data: The split, scaled data. Only training and validation rows are used.
        settings: The study's ``[train]`` section.
        seed: Seeds weight initialization, shuffling and the range test.
        schedule: ``one_cycle`` or ``constant``. Defaults to ``settings.schedule``.
        callbacks: Extra Keras callbacks (epoch granularity), e.g. Optuna's pruning callback.
        on_abort: Called with the record so far when training raises (a pruned or diverged
            trial), before the error propagates. Defaults to nothing.

    Returns:
        The trained model and its record.
    """
    p = {**DEFAULT_PARAMS, **params}
    schedule = schedule or settings.schedule
    batch_size = int(p["batch_size"])
    # Without the garbage collection that clear_session() runs by default: it took 0.2 s, an
    # eighth of a small trial, and Python's own collector frees the last model soon enough.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
    optimizer = str(p.get("optimizer", "sgd"))
    model = build_model(
        p["n_hidden"],
        p["n_neurons"],
        float(p.get("learning_rate", DEFAULT_PARAMS["learning_rate"])),
        p["activation"],
        data.input_shape,
        optimizer=optimizer,
    )
    result: RangeTestResult | None = None
    suggestion: float | None = None
    learning_rate = float(p.get("learning_rate", DEFAULT_PARAMS["learning_rate"]))
    if settings.lr_finder:
        # One epoch, but never fewer than 100 steps: the rules need a curve, not a few points.
        steps = max(RANGE_TEST_MIN_STEPS, math.ceil(len(data.y_train) / batch_size))
        result = range_test(
            model, data.x_train, data.y_train, batch_size=batch_size, steps=steps, seed=seed
        )
        suggestion = result.suggest(settings.lr_suggestion)
        learning_rate = suggestion * float(p.get("lr_factor", 1.0))
        _logger.debug("Range test suggests LR %.3g; using %.3g.", suggestion, learning_rate)
    total_steps = settings.epochs * math.ceil(len(data.y_train) / batch_size)
    lr_schedule = None
    momentum_schedule = None
    if schedule == "one_cycle":
        lr_schedule = OneCycleSchedule(total_steps, learning_rate)
        if settings.cycle_momentum and optimizer in ("nesterov", "adam"):
            momentum_schedule = OneCycleMomentum(total_steps)
    else:
        model.optimizer.learning_rate = learning_rate
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=settings.early_stopping_patience, restore_best_weights=True
    )
    trained = TrainedModel(
        model=model,
        history=TrainingHistory(),
        learning_rate=learning_rate,
        range_test=result,
        lr_suggestion=suggestion,
        total_steps=total_steps,
    )
    try:
        fit(
            model,
            data.x_train,
            data.y_train,
            validation_data=(data.x_valid, data.y_valid),
            epochs=settings.epochs,
            batch_size=batch_size,
            lr_schedule=lr_schedule,
            momentum_schedule=momentum_schedule,
            callbacks=[early_stopping, *callbacks],
            seed=seed,
            history=trained.history,
        )
    except Exception:
        trained.aborted = True
        if on_abort is not None:
            on_abort(trained)
        raise
    return trained
