"""The LR range test: grow the learning rate exponentially, watch the loss, suggest an LR.

As in the reference notebook, the sweep stops once the loss passes 4x its lowest value, or
when the LR would pass ``max_lr``, and the suggestion is the LR at the lowest loss divided
by 10 (other rules in :mod:`tuner.lr_suggestion`). Unlike the notebook, the model leaves
the test as it came in: its weights and its optimizer state are restored (as fastai does).

:func:`range_test` runs the whole sweep as one compiled call; :class:`LRFinder` is the
notebook's per-batch callback, for people who train with ``model.fit``. Both record the
same sweep.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tuner.lr_suggestion import (
    DEFAULT_SKIP_END,
    DEFAULT_SKIP_START,
    RULES,
    suggest_lr,
    suggestion_spread,
)
from tuner.training import CompiledSteps

__all__ = ["LRFinder", "RangeTestResult", "exponential_lrs", "range_test"]

DEFAULT_MIN_LR = 1e-5
DEFAULT_MAX_LR = 10.0
DEFAULT_STOP_FACTOR = 4.0

_logger = logging.getLogger(__name__)


def exponential_lrs(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """Returns ``steps`` learning rates growing exponentially from ``min_lr`` to ``max_lr``.

    Raises:
        ValueError: The bounds are not ``0 < min_lr < max_lr`` or ``steps < 2``.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"the sweep needs 0 < min_lr < max_lr, but got {min_lr=}, {max_lr=}.")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, but got {steps=}.")
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))


@dataclass(frozen=True)
class RangeTestResult:
    """A range test's curve.

    Attributes:
        lrs: The learning rate of each step.
        losses: The training loss of each step's batch.
    """

    lrs: np.ndarray
    losses: np.ndarray

    def suggest(
        self,
        rule: str = "min_div_10",
        *,
        skip_start: int = DEFAULT_SKIP_START,
        skip_end: int = DEFAULT_SKIP_END,
    ) -> float:
        """Suggests an LR by ``rule``; see :func:`tuner.lr_suggestion.suggest_lr`."""
        return suggest_lr(self.lrs, self.losses, rule, skip_start=skip_start, skip_end=skip_end)

    def suggestions(self, **skips: int) -> dict[str, float]:
        """Every rule's suggestion, by rule name."""
        return {rule: self.suggest(rule, **skips) for rule in RULES}

    @staticmethod
    def spread(suggestions: Mapping[str, float]) -> float:
        """How far apart suggestions land, in decades."""
        return suggestion_spread(suggestions)


def range_test(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 32,
    min_lr: float = DEFAULT_MIN_LR,
    max_lr: float = DEFAULT_MAX_LR,
    steps: int | None = None,
    stop_factor: float = DEFAULT_STOP_FACTOR,
    shuffle: bool = True,
    seed: int | None = None,
) -> RangeTestResult:
    """Runs an LR range test as one compiled call, and restores the model afterwards.

    Args:
        model: A model compiled with a float learning rate.
        x: Training inputs.
        y: Training targets.
        batch_size: Rows per step. Defaults to 32.
        min_lr: The first LR. Defaults to 1e-5.
        max_lr: The LR the sweep ends at. Defaults to 10.
        steps: Steps from ``min_lr`` to ``max_lr``. Defaults to one epoch.
        stop_factor: Stop once the loss passes this multiple of its lowest value.
            Defaults to 4.
        shuffle: Shuffle the rows first. Defaults to True.
        seed: Seed of the shuffling.

    Returns:
        The recorded curve.
    """
    n_rows = len(x)
    steps = steps or math.ceil(n_rows / batch_size)
    lrs = exponential_lrs(min_lr, max_lr, steps)
    order = np.random.default_rng(seed).permutation(n_rows) if shuffle else np.arange(n_rows)
    snapshot = _ModelSnapshot(model)
    try:
        compiled = CompiledSteps(model)
        losses = compiled.sweep(
            tf.constant(np.asarray(x, np.float32)),
            tf.constant(np.asarray(y, np.float32).reshape(n_rows, -1)),
            tf.constant(order, tf.int32),
            batch_size,
            lrs,
            stop_factor,
        )
    finally:
        snapshot.restore()
    _logger.debug(
        "Range test: %d of %d steps, up to LR %.3g.", len(losses), steps, lrs[len(losses) - 1]
    )
    return RangeTestResult(lrs=lrs[: len(losses)], losses=losses)


class LRFinder(keras.callbacks.Callback):
    """The notebook's LR finder as a ``model.fit`` callback.

    It sets the LR to ``min_lr``, multiplies it after every batch so that it reaches
    ``max_lr`` after ``steps`` batches, records each batch's LR and loss, and stops training
    once the loss passes ``stop_factor`` times its lowest value, is NaN or infinite, or the
    LR would pass ``max_lr``. At the end it restores the weights and optimizer state.

    Keras 3 logs the epoch's running mean loss after each batch; like the notebook, the
    callback recovers each batch's own loss from it (exact for equal-sized batches).

    Args:
        min_lr: The first LR. Defaults to 1e-5.
        max_lr: The last LR. Defaults to 10.
        steps: Batches from ``min_lr`` to ``max_lr``. Defaults to all batches of the fit.
        stop_factor: Stop once the loss passes this multiple of its lowest value.
            Defaults to 4.

    Attributes:
        lrs: The LR of each recorded batch.
        losses: The loss of each recorded batch.
    """

    def __init__(
        self,
        min_lr: float = DEFAULT_MIN_LR,
        max_lr: float = DEFAULT_MAX_LR,
        steps: int | None = None,
        stop_factor: float = DEFAULT_STOP_FACTOR,
    ) -> None:
        super().__init__()
        if steps is not None:
            exponential_lrs(min_lr, max_lr, steps)
        self.min_lr = min_lr
        self.max_lr = max_lr
        self.steps = steps
        self.stop_factor = stop_factor
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._schedule = np.empty(0)
        self._snapshot: _ModelSnapshot | None = None
        self._epoch_sum = 0.0
        self._best = math.inf

    @property
    def result(self) -> RangeTestResult:
        """The recorded curve."""
        return RangeTestResult(lrs=np.asarray(self.lrs), losses=np.asarray(self.losses))

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        steps = self.steps or int(self.params["steps"]) * int(self.params["epochs"])
        self._schedule = exponential_lrs(self.min_lr, self.max_lr, steps)
        self._snapshot = _ModelSnapshot(self.model)
        self.lrs, self.losses, self._best = [], [], math.inf
        self.model.optimizer.learning_rate = float(self._schedule[0])

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_sum = 0.0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        mean_loss = float((logs or {})["loss"])
        epoch_sum = mean_loss * (batch + 1)
        loss = epoch_sum - self._epoch_sum
        self._epoch_sum = epoch_sum
        self.lrs.append(float(self._schedule[len(self.lrs)]))
        self.losses.append(loss)
        if not math.isfinite(loss) or loss > self.stop_factor * self._best:
            self.model.stop_training = True
            return
        self._best = min(self._best, loss)
        if len(self.lrs) >= len(self._schedule):
            self.model.stop_training = True
            return
        self.model.optimizer.learning_rate = float(self._schedule[len(self.lrs)])

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._snapshot is not None:
            self._snapshot.restore()
            self._snapshot = None


class _ModelSnapshot:
    """The weights and optimizer variables of a model, to put back after a range test."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        optimizer = model.optimizer
        # Build first so that slot variables (momenta) exist and are captured as zeros.
        optimizer.build(model.trainable_variables)
        self.weights = model.get_weights()
        self.optimizer_values = [np.array(v.numpy()) for v in optimizer.variables]

    def restore(self) -> None:
        self.model.set_weights(self.weights)
        for variable, value in zip(
            self.model.optimizer.variables, self.optimizer_values, strict=True
        ):
            variable.assign(value)
