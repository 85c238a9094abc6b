"""The 1-Cycle policy: the notebook's schedule as a function, a Keras schedule and a callback.

The learning rate starts at ``max_lr / 25``, rises along a cosine to ``max_lr`` over the first
30% of the steps, then falls along a cosine to ``max_lr / 1000`` at the last step. Momentum,
where cycled, moves the other way: 0.95 down to 0.85 at the peak, then back to 0.95
(Smith, 2018; fastai). :func:`one_cycle_lr` is the definition; :class:`OneCycleSchedule`
computes the same numbers inside the TensorFlow graph, and :class:`OneCycleScheduler` sets
them from Python for people who train with ``model.fit``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from tuner.config import ONE_CYCLE_WARMUP_FRACTION

__all__ = [
    "OneCycleSchedule",
    "OneCycleScheduler",
    "one_cycle_lr",
    "one_cycle_momentum",
]

WARMUP_FRACTION = ONE_CYCLE_WARMUP_FRACTION
START_DIV = 25.0
END_DIV = 1000.0
MOMENTUM_HIGH = 0.95
MOMENTUM_LOW = 0.85


def one_cycle_lr(
    step: int,
    total_steps: int,
    max_lr: float,
    *,
    warmup_fraction: float = WARMUP_FRACTION,
    start_div: float = START_DIV,
    end_div: float = END_DIV,
) -> float:
    """Returns the 1-Cycle learning rate at ``step``.

    Args:
        step: The 0-based training step (batch). Steps past the end keep the final LR.
        total_steps: The number of steps in the whole run.
        max_lr: The peak learning rate.
        warmup_fraction: The fraction of the steps spent warming up. Defaults to 0.3.
        start_div: The first LR is ``max_lr / start_div``. Defaults to 25.
        end_div: The last LR is ``max_lr / end_div``. Defaults to 1000.

    Returns:
        The learning rate.

    Raises:
        ValueError: An argument is out of range.
    """
    peak_step = _check(step, total_steps, max_lr, warmup_fraction)
    if start_div <= 0 or end_div <= 0:
        raise ValueError(f"start_div and end_div must be > 0, but got {start_div=}, {end_div=}.")
    return _cycle(step, total_steps, peak_step, max_lr / start_div, max_lr, max_lr / end_div)


def one_cycle_momentum(
    step: int,
    total_steps: int,
    *,
    warmup_fraction: float = WARMUP_FRACTION,
    high: float = MOMENTUM_HIGH,
    low: float = MOMENTUM_LOW,
) -> float:
    """Returns the momentum at ``step``: ``high`` down to ``low`` at the LR peak, then back.

    Args:
        step: The 0-based training step.
        total_steps: The number of steps in the whole run.
        warmup_fraction: The fraction of the steps spent warming up. Defaults to 0.3.
        high: The momentum at the start and the end. Defaults to 0.95.
        low: The momentum at the LR peak. Defaults to 0.85.

    Returns:
        The momentum.

    Raises:
        ValueError: An argument is out of range.
    """
    peak_step = _check(step, total_steps, 1.0, warmup_fraction)
    if not 0.0 <= low <= high < 1.0:
        raise ValueError(f"momentum needs 0 <= low <= high < 1, but got {low=}, {high=}.")
    return _cycle(step, total_steps, peak_step, high, low, high)


def _check(step: int, total_steps: int, max_lr: float, warmup_fraction: float) -> float:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, but got {total_steps=}.")
    if step < 0:
        raise ValueError(f"step must be >= 0, but got {step=}.")
    if not max_lr > 0:
        raise ValueError(f"max_lr must be > 0, but got {max_lr=}.")
    if not 0.0 < warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in (0, 1), but got {warmup_fraction=}.")
    return _peak_step(total_steps, warmup_fraction)


def _peak_step(total_steps: int, warmup_fraction: float) -> float:
    # The first step has the start value and the last step the end value, as in PyTorch.
    return warmup_fraction * (total_steps - 1)


def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


def _cycle(step: float, total: int, peak: float, start: float, top: float, end: float) -> float:
    last = total - 1
    if last == 0 or step >= last:
        return end if last > 0 else top
    if step <= peak:
        return _cosine(start, top, step / peak)
    return _cosine(top, end, (step - peak) / (last - peak))


@keras.saving.register_keras_serializable(package="tuner")
class OneCycleSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The 1-Cycle LR as a Keras schedule, computed in the graph from the optimizer's step.

    Give it to an optimizer (``SGD(learning_rate=OneCycleSchedule(...))``) or to
    :func:`tuner.fit`; either way no Python runs per batch. It matches :func:`one_cycle_lr`.

    Args:
        total_steps: The number of steps in the whole run.
        max_lr: The peak learning rate.
        warmup_fraction: The fraction of the steps spent warming up. Defaults to 0.3.
        start_div: The first LR is ``max_lr / start_div``. Defaults to 25.
        end_div: The last LR is ``max_lr / end_div``. Defaults to 1000.
    """

    def __init__(
        self,
        total_steps: int,
        max_lr: float,
        warmup_fraction: float = WARMUP_FRACTION,
        start_div: float = START_DIV,
        end_div: float = END_DIV,
    ) -> None:
        one_cycle_lr(
            0,
            total_steps,
            max_lr,
            warmup_fraction=warmup_fraction,
            start_div=start_div,
            end_div=end_div,
        )
        self.total_steps = int(total_steps)
        self.max_lr = float(max_lr)
        self.warmup_fraction = float(warmup_fraction)
        self.start_div = float(start_div)
        self.end_div = float(end_div)

    def __call__(self, step: Any) -> Any:
        return _graph_cycle(
            step,
            self.total_steps,
            _peak_step(self.total_steps, self.warmup_fraction),
            self.max_lr / self.start_div,
            self.max_lr,
            self.max_lr / self.end_div,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "max_lr": self.max_lr,
            "warmup_fraction": self.warmup_fraction,
            "start_div": self.start_div,
            "end_div": self.end_div,
        }


class OneCycleMomentum:
    """The 1-Cycle momentum as a graph function of the step, matching :func:`one_cycle_momentum`."""

    def __init__(
        self,
        total_steps: int,
        warmup_fraction: float = WARMUP_FRACTION,
        high: float = MOMENTUM_HIGH,
        low: float = MOMENTUM_LOW,
    ) -> None:
        one_cycle_momentum(0, total_steps, warmup_fraction=warmup_fraction, high=high, low=low)
        self.total_steps = int(total_steps)
        self.peak_step = _peak_step(total_steps, warmup_fraction)
        self.high = float(high)
        self.low = float(low)

    def __call__(self, step: Any) -> Any:
        return _graph_cycle(step, self.total_steps, self.peak_step, self.high, self.low, self.high)


def _graph_cycle(step: Any, total: int, peak: float, start: float, top: float, end: float) -> Any:
    """:func:`_cycle` in Keras ops, so that it runs inside a compiled training step."""
    last = float(total - 1)
    if last == 0:
        return ops.convert_to_tensor(top, dtype="float32")
    # In float64: near the end ``1 + cos`` cancels, and float32 drifts ~1e-5 from one_cycle_lr.
    step = ops.minimum(ops.cast(step, "float64"), last)
    rising = _graph_cosine(start, top, step / peak)
    falling = _graph_cosine(top, end, (step - peak) / (last - peak))
    return ops.cast(ops.where(step <= peak, rising, falling), "float32")


def _graph_cosine(start: float, end: float, progress: Any) -> Any:
    return end + (start - end) * (1.0 + ops.cos(math.pi * progress)) / 2.0


class OneCycleScheduler(keras.callbacks.Callback):
    """Sets the 1-Cycle LR before every batch of ``model.fit``, and records it.

    This is the notebook's callback, for people who train with ``model.fit``. Inside tuner's
    own training loop, :class:`OneCycleSchedule` does the same without a Python call per batch.

    Args:
        total_steps: The number of batches in the whole run (epochs x steps per epoch).
        max_lr: The peak learning rate.
        warmup_fraction: The fraction of the steps spent warming up. Defaults to 0.3.
        start_div: The first LR is ``max_lr / start_div``. Defaults to 25.
        end_div: The last LR is ``max_lr / end_div``. Defaults to 1000.

    Attributes:
        lrs: Every learning rate it set, in order.
    """

    def __init__(
        self,
        total_steps: int,
        max_lr: float,
        warmup_fraction: float = WARMUP_FRACTION,
        start_div: float = START_DIV,
        end_div: float = END_DIV,
    ) -> None:
        super().__init__()
        one_cycle_lr(
            0,
            total_steps,
            max_lr,
            warmup_fraction=warmup_fraction,
            start_div=start_div,
            end_div=end_div,
        )
        self.total_steps = total_steps
        self.max_lr = max_lr
        self.warmup_fraction = warmup_fraction
        self.start_div = start_div
        self.end_div = end_div
        self.step = 0
        self.lrs: list[float] = []

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        lr = one_cycle_lr(
            self.step,
            self.total_steps,
            self.max_lr,
            warmup_fraction=self.warmup_fraction,
            start_div=self.start_div,
            end_div=self.end_div,
        )
        self.model.optimizer.learning_rate = lr
        self.lrs.append(lr)
        self.step += 1
