"""A fast training loop for small Keras models: one compiled TensorFlow call per epoch.

``model.fit`` spends most of its time on a small MLP in per-batch Python: the step loop,
callbacks, metric bookkeeping. Here a whole epoch is one ``tf.function`` with the batch loop
inside the graph, the learning rate (and momentum) comes from a graph-side schedule, and
validation is one call on the whole validation set. Keras callbacks still work at epoch
granularity (``EarlyStopping``, ``ModelCheckpoint``, ``CSVLogger``, Optuna's pruning
callback); batch-level hooks do not run. Measured in ``benchmarks/speed.py``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = ["TrainingDivergedError", "TrainingHistory", "fit"]

_logger = logging.getLogger(__name__)

# Validation runs in chunks of this many rows, to bound memory on large data.
_EVAL_CHUNK = 65536

Schedule = Callable[[Any], Any]


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainingHistory:
    """What :func:`fit` measured, one entry per epoch.

    Attributes:
        loss: Mean training loss of each epoch.
        val_loss: Validation MSE after each epoch.
        val_mae: Validation MAE after each epoch.
        lr: The learning rate at the end of each epoch.
        seconds: Wall time of the whole call, compilation included.
    """

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_mae: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        """The number of epochs trained."""
        return len(self.loss)

    @property
    def best_epoch(self) -> int:
        """The 0-based epoch with the lowest validation MSE."""
        return int(np.argmin(self.val_loss))

    @property
    def best_val_loss(self) -> float:
        """The lowest validation MSE."""
        return self.val_loss[self.best_epoch]

    @property
    def best_val_mae(self) -> float:
        """The validation MAE at the epoch of the lowest MSE."""
        return self.val_mae[self.best_epoch]


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    validation_data: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int = 32,
    lr_schedule: Schedule | None = None,
    momentum_schedule: Schedule | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    shuffle: bool = True,
    seed: int | None = None,
    history: TrainingHistory | None = None,
) -> TrainingHistory:
    """Trains a compiled model like ``model.fit``, with a compiled loop per epoch.

    Args:
        model: A model compiled with an optimizer and a loss.
        x: Training inputs.
        y: Training targets.
        validation_data: ``(x_valid, y_valid)``, scored after every epoch.
        epochs: The most epochs to train; a callback may stop sooner.
        batch_size: Rows per step; the last step of an epoch takes the remainder.
            Defaults to 32.
        lr_schedule: A function of the optimizer's step, in Keras ops, that gives the LR
            (for example :class:`~tuner.OneCycleSchedule`). Defaults to the optimizer's own LR.
        momentum_schedule: Like ``lr_schedule``, for the optimizer's momentum (SGD) or
            ``beta_1`` (Adam). Defaults to the optimizer's own value.
        callbacks: Keras callbacks; their epoch and train hooks run, batch hooks do not.
        shuffle: Shuffle the training rows before every epoch. Defaults to True.
        seed: Seed of the shuffling. Defaults to fresh entropy.
        history: Filled in place as epochs end, so that the caller keeps the epochs trained
            when a callback raises (Optuna's pruning does). Defaults to a new one.

    Returns:
        The per-epoch history.

    Raises:
        TrainingDivergedError: The training loss became NaN or infinite.
        ValueError: An argument is invalid.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, but got {epochs=}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size=}.")
    start = time.perf_counter()
    steps = CompiledSteps(model, lr_schedule=lr_schedule, momentum_schedule=momentum_schedule)
    x_train, y_train = _as_tensors(x, y)
    x_valid, y_valid = _as_tensors(*validation_data)
    rng = np.random.default_rng(seed)
    n_rows = int(x_train.shape[0])
    callback_list = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=False,
        add_progbar=False,
        model=model,
        epochs=epochs,
        steps=math.ceil(n_rows / batch_size),
        verbose=0,
    )
    history = history if history is not None else TrainingHistory()
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        order = rng.permutation(n_rows) if shuffle else np.arange(n_rows)
        loss = float(steps.train_epoch(x_train, y_train, tf.constant(order, tf.int32), batch_size))
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training loss became {loss} in epoch {epoch + 1} at learning rate "
                f"{steps.learning_rate():.3g}."
            )
        val_loss, val_mae = steps.evaluate(x_valid, y_valid)
        if not math.isfinite(val_loss):
            raise TrainingDivergedError(f"validation loss became {val_loss} in epoch {epoch + 1}.")
        logs = {
            "loss": loss,
            "val_loss": val_loss,
            "val_mae": val_mae,
            "learning_rate": steps.learning_rate(),
        }
        history.loss.append(loss)
        history.val_loss.append(val_loss)
        history.val_mae.append(val_mae)
        history.lr.append(logs["learning_rate"])
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end({"loss": history.loss[-1], "val_loss": history.val_loss[-1]})
    history.seconds = time.perf_counter() - start
    _logger.debug("Trained %d epochs in %.2f s.", history.epochs, history.seconds)
    return history


class CompiledSteps:
    """The compiled graph functions of one model: a training epoch, an LR sweep, validation.

    Args:
        model: A compiled model.
        lr_schedule: Sets the LR before every step from the optimizer's step count.
        momentum_schedule: Sets momentum (or Adam's beta_1) the same way.
    """

    def __init__(
        self,
        model: keras.Model,
        lr_schedule: Schedule | None = None,
        momentum_schedule: Schedule | None = None,
    ) -> None:
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"tuner's training loop needs the TensorFlow backend of Keras, but "
                f"KERAS_BACKEND is {keras.backend.backend()!r}."
            )
        if model.optimizer is None:
            raise ValueError("model must be compiled with an optimizer before training.")
        self.model = model
        self.optimizer = model.optimizer
        self.optimizer.build(model.trainable_variables)
        self._lr_variable = _lr_variable(self.optimizer) if lr_schedule is not None else None
        self._lr_schedule = lr_schedule
        self._momentum_variable = (
            momentum_variable(self.optimizer) if momentum_schedule is not None else None
        )
        self._momentum_schedule = momentum_schedule
        self._train_epoch = tf.function(self._train_epoch_graph, reduce_retracing=True)
        self._sweep = tf.function(self._sweep_graph, reduce_retracing=True)
        self._evaluate = tf.function(self._evaluate_graph, reduce_retracing=True)

    def learning_rate(self) -> float:
        """The optimizer's current learning rate."""
        return float(self.optimizer.learning_rate.numpy())

    def train_epoch(self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, batch_size: int) -> float:
        """Trains one pass over ``x[order]`` and returns the row-weighted mean loss."""
        return float(self._train_epoch(x, y, order, tf.constant(batch_size, tf.int32)))

    def sweep(
        self,
        x: tf.Tensor,
        y: tf.Tensor,
        order: tf.Tensor,
        batch_size: int,
        lrs: np.ndarray,
        stop_factor: float,
    ) -> np.ndarray:
        """Trains one step per LR in ``lrs`` and returns each step's loss.

        Stops after the first loss that is not finite or that exceeds ``stop_factor``
        times the lowest loss so far, so the result may be shorter than ``lrs``.
        """
        losses = self._sweep(
            x,
            y,
            order,
            tf.constant(batch_size, tf.int32),
            tf.constant(lrs, tf.float32),
            tf.constant(stop_factor, tf.float32),
        )
        return np.asarray(losses, dtype=np.float64)

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tuple[float, float]:
        """Returns the MSE and MAE of the model on ``(x, y)``."""
        n_rows = int(x.shape[0])
        squared = absolute = 0.0
        for begin in range(0, n_rows, _EVAL_CHUNK):
            sq, ab = self._evaluate(x[begin : begin + _EVAL_CHUNK], y[begin : begin + _EVAL_CHUNK])
            squared += float(sq)
            absolute += float(ab)
        return squared / n_rows, absolute / n_rows

    def _step(self, x_batch: tf.Tensor, y_batch: tf.Tensor) -> tf.Tensor:
        if self._lr_variable is not None and self._lr_schedule is not None:
            self._lr_variable.assign(self._lr_schedule(self.optimizer.iterations))
        if self._momentum_variable is not None and self._momentum_schedule is not None:
            self._momentum_variable.assign(self._momentum_schedule(self.optimizer.iterations))
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            prediction = self.model(x_batch, training=True)
            loss = self.model.compute_loss(x=x_batch, y=y_batch, y_pred=prediction)
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def _train_epoch_graph(
        self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, batch_size: tf.Tensor
    ) -> tf.Tensor:
        n_rows = tf.shape(order)[0]
        n_steps = (n_rows + batch_size - 1) // batch_size
        total = tf.constant(0.0, tf.float32)
        for i in tf.range(n_steps):
            rows = order[i * batch_size : tf.minimum((i + 1) * batch_size, n_rows)]
            loss = self._step(tf.gather(x, rows), tf.gather(y, rows))
            total += tf.cast(loss, tf.float32) * tf.cast(tf.shape(rows)[0], tf.float32)
        return total / tf.cast(n_rows, tf.float32)

    def _sweep_graph(
        self,
        x: tf.Tensor,
        y: tf.Tensor,
        order: tf.Tensor,
        batch_size: tf.Tensor,
        lrs: tf.Tensor,
        stop_factor: tf.Tensor,
    ) -> tf.Tensor:
        lr_variable = _lr_variable(self.optimizer)
        n_rows = tf.shape(order)[0]
        steps_per_epoch = (n_rows + batch_size - 1) // batch_size
        n_steps = tf.shape(lrs)[0]
        losses = tf.TensorArray(tf.float32, size=n_steps)
        best = tf.constant(np.inf, tf.float32)
        taken = tf.constant(0, tf.int32)
        for i in tf.range(n_steps):
            # A sweep longer than an epoch starts over at the first batch, as model.fit does.
            begin = (i % steps_per_epoch) * batch_size
            rows = order[begin : tf.minimum(begin + batch_size, n_rows)]
            lr_variable.assign(lrs[i])
            loss = tf.cast(self._step(tf.gather(x, rows), tf.gather(y, rows)), tf.float32)
            losses = losses.write(i, loss)
            taken = i + 1
            if not tf.math.is_finite(loss) or loss > stop_factor * best:
                break
            best = tf.minimum(best, loss)
        return losses.stack()[:taken]

    def _evaluate_graph(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        error = tf.cast(self.model(x, training=False), tf.float32) - y
        return tf.reduce_sum(tf.square(error)), tf.reduce_sum(tf.abs(error))


def _lr_variable(optimizer: keras.optimizers.Optimizer) -> keras.Variable:
    variable = optimizer.learning_rate
    if not isinstance(variable, keras.Variable):
        raise ValueError(
            "the optimizer already has a learning-rate schedule; compile the model with a "
            "float learning rate to drive it from lr_schedule."
        )
    return variable


def momentum_variable(optimizer: keras.optimizers.Optimizer) -> keras.Variable:
    """Returns a variable that holds the optimizer's momentum, creating it on first use.

    Keras keeps SGD's ``momentum`` and Adam's ``beta_1`` as Python floats, which a compiled
    step would bake in as constants; a variable lets a schedule change them per step.

    Raises:
        ValueError: The optimizer has no momentum to cycle.
    """
    name = "beta_1" if isinstance(optimizer, keras.optimizers.Adam) else "momentum"
    value = getattr(optimizer, name, None)
    if isinstance(value, keras.Variable):
        return value
    if not isinstance(value, float) or (name == "momentum" and value == 0.0):
        raise ValueError(
            f"{type(optimizer).__name__} has no momentum to cycle; use SGD with momentum > 0 "
            f"or Adam."
        )
    variable = optimizer.add_variable(
        shape=(), initializer=keras.initializers.Constant(value), dtype="float32", name=name
    )
    setattr(optimizer, name, variable)
    if isinstance(optimizer, keras.optimizers.SGD):
        optimizer.update_step = _sgd_update_step(optimizer, variable)
    return variable


def _sgd_update_step(
    optimizer: keras.optimizers.SGD, momentum: keras.Variable
) -> Callable[..., None]:
    """Keras's SGD update with the momentum read from ``momentum``.

    ``SGD.update_step`` asks ``if self.momentum != 0`` in Python, which a variable cannot
    answer inside a compiled step; momentum > 0 is checked before this is installed.
    """

    def update_step(gradient: Any, variable: keras.Variable, learning_rate: Any) -> None:
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        mu = keras.ops.cast(momentum, variable.dtype)
        m = optimizer.momentums[optimizer._get_variable_index(variable)]
        step = keras.ops.multiply(gradient, learning_rate)
        optimizer.assign(m, keras.ops.subtract(keras.ops.multiply(m, mu), step))
        if optimizer.nesterov:
            optimizer.assign_add(variable, keras.ops.subtract(keras.ops.multiply(m, mu), step))
        else:
            optimizer.assign_add(variable, m)

    return update_step


def _as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    x_array = np.asarray(x, dtype=np.float32)
    y_array = np.asarray(y, dtype=np.float32).reshape(len(x_array), -1)
    return tf.constant(x_array), tf.constant(y_array)
