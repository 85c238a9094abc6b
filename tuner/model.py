"""The reference notebook's model builder, hardened for values that come from a sampler."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, cast

import keras

__all__ = ["OPTIMIZERS", "build_model", "make_optimizer"]

# Momentum for "nesterov"; the 1-Cycle paper's upper value, which cycling starts from.
NESTEROV_MOMENTUM = 0.95
OPTIMIZERS = ("sgd", "nesterov", "adam")


def build_model(
    n_hidden: int = 1,
    n_neurons: int = 30,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
    activation: str = "relu",
    input_shape: Sequence[int] | int = (8,),
    *,
    optimizer: str = "sgd",
) -> keras.Sequential:
    """Builds and compiles the notebook's MLP: Dense layers, MSE loss, MAE metric.

    Integer arguments may be Python or NumPy integers (``np.random.choice`` returns NumPy
    scalars, which Keras 3's ``Dense`` rejects).

    Args:
        n_hidden: Number of hidden layers. Defaults to 1.
        n_neurons: Units per hidden layer. Defaults to 30.
        learning_rate: A positive LR, or a Keras ``LearningRateSchedule``. Defaults to 0.01.
        activation: A Keras activation name for the hidden layers. Defaults to ``"relu"``.
        input_shape: The shape of one input row. Defaults to ``(8,)``.
        optimizer: ``"sgd"`` (the notebook's), ``"nesterov"`` (SGD with Nesterov momentum
            0.95) or ``"adam"``. Defaults to ``"sgd"``.

    Returns:
        The compiled model.

    Raises:
        ValueError: An argument is out of range or of the wrong type; the message names it.
    """
    n_hidden = _positive_int("n_hidden", n_hidden, minimum=1)
    n_neurons = _positive_int("n_neurons", n_neurons, minimum=1)
    shape = _input_shape(input_shape)
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(
            f"activation must be a Keras activation name, but got {activation=}."
        ) from None
    model = keras.Sequential([keras.Input(shape=shape)])
    for _ in range(n_hidden):
        model.add(keras.layers.Dense(n_neurons, activation=activation))
    model.add(keras.layers.Dense(1))
    model.compile(loss="mse", optimizer=make_optimizer(optimizer, learning_rate), metrics=["mae"])
    return model


def make_optimizer(
    name: str, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
) -> keras.optimizers.Optimizer:
    """Returns a fresh optimizer by name; see :func:`build_model` for the names.

    Raises:
        ValueError: The name or the learning rate is invalid.
    """
    if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        learning_rate = _positive_float("learning_rate", learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate)
    if name == "nesterov":
        return keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=NESTEROV_MOMENTUM, nesterov=True
        )
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(
        f"optimizer must be one of {', '.join(OPTIMIZERS)}, but got optimizer={name!r}."
    )


def _positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, but got {name}={value!r}.")
    if isinstance(value, numbers.Integral):
        result = int(value)
    elif isinstance(value, numbers.Real) and float(value).is_integer():
        result = int(float(value))
    else:
        raise ValueError(f"{name} must be an integer, but got {name}={value!r}.")
    if result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {name}={result}.")
    return result


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, but got {name}={value!r}.")
    result = float(value)
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be a positive finite number, but got {name}={result}.")
    return result


def _input_shape(value: Sequence[int] | int) -> tuple[int, ...]:
    dims = (value,) if isinstance(value, numbers.Integral) else tuple(cast(Sequence[int], value))
    if not dims:
        raise ValueError(
            f"input_shape must have at least one dimension, but got input_shape={value!r}."
        )
    return tuple(_positive_int("input_shape", d, minimum=1) for d in dims)
