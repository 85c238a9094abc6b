from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest

from tuner.model import build_model
from tuner.one_cycle import (
    OneCycleMomentum,
    OneCycleSchedule,
    OneCycleScheduler,
    one_cycle_lr,
    one_cycle_momentum,
)

MAX_LR = 0.1
# Tiny runs, where the peak and the end are one or two steps apart, and long ones, where
# float32 arithmetic would drift from the Python definition near the end of the cycle.
TOTALS = (1, 2, 3, 4, 10, 101, 12_000)


def _lrs(total: int, max_lr: float = MAX_LR, extra: int = 0) -> np.ndarray:
    return np.array([one_cycle_lr(step, total, max_lr) for step in range(total + extra)])


def _graph_values(function: Any, total: int, extra: int = 3) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(total + extra)
    values = keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(steps, "int64")))
    return steps, np.broadcast_to(values, steps.shape).astype(np.float64)


def test_first_step_is_max_lr_over_25() -> None:
    assert one_cycle_lr(0, 100, MAX_LR) == pytest.approx(MAX_LR / 25, rel=1e-12)


def test_peak_is_max_lr_at_30_percent_of_the_steps() -> None:
    # total 101: the peak step 0.3 * (101 - 1) = 30 falls on a step.
    lrs = _lrs(101)
    assert int(np.argmax(lrs)) == 30
    assert lrs[30] == pytest.approx(MAX_LR, rel=1e-12)


def test_peak_between_steps_when_30_percent_is_fractional() -> None:
    # total 100: the peak is at step 29.7, so steps 29 and 30 are both just below max_lr.
    lrs = _lrs(100)
    assert int(np.argmax(lrs)) in (29, 30)
    assert lrs.max() < MAX_LR
    assert lrs.max() == pytest.approx(MAX_LR, rel=1e-3)


def test_last_step_is_max_lr_over_1000() -> None:
    assert one_cycle_lr(99, 100, MAX_LR) == pytest.approx(MAX_LR / 1000, rel=1e-12)


def test_both_phases_follow_a_cosine() -> None:
    # total 201: peak at step 60, the last step is 200. A quarter of the way through a cosine
    # from a to b gives a + (b - a) * (1 - cos(pi / 4)) / 2, not the linear a + (b - a) / 4.
    quarter = (1 - math.cos(math.pi / 4)) / 2
    start, top, end = MAX_LR / 25, MAX_LR, MAX_LR / 1000
    assert one_cycle_lr(15, 201, MAX_LR) == pytest.approx(start + (top - start) * quarter)
    assert one_cycle_lr(60 + 35, 201, MAX_LR) == pytest.approx(top + (end - top) * quarter)


def test_rises_monotonically_then_falls() -> None:
    lrs = _lrs(1000)
    peak = int(np.argmax(lrs))
    assert peak == round(0.3 * 999)
    assert np.all(np.diff(lrs[: peak + 1]) > 0)
    assert np.all(np.diff(lrs[peak:]) < 0)


def test_steps_past_the_end_keep_the_final_lr() -> None:
    final = one_cycle_lr(49, 50, MAX_LR)
    assert [one_cycle_lr(step, 50, MAX_LR) for step in (50, 51, 1000)] == [final] * 3


def test_two_steps_go_from_start_to_end() -> None:
    assert _lrs(2).tolist() == pytest.approx([MAX_LR / 25, MAX_LR / 1000], rel=1e-12)


def test_custom_divisors_and_warmup() -> None:
    custom = [
        one_cycle_lr(s, 11, 1.0, warmup_fraction=0.5, start_div=10, end_div=100) for s in range(11)
    ]
    assert custom[0] == pytest.approx(0.1)
    assert int(np.argmax(custom)) == 5
    assert custom[5] == pytest.approx(1.0)
    assert custom[10] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((0, 0, MAX_LR), {}, "total_steps"),
        ((-1, 10, MAX_LR), {}, "step"),
        ((0, 10, 0.0), {}, "max_lr"),
        ((0, 10, -1.0), {}, "max_lr"),
        ((0, 10, math.nan), {}, "max_lr"),
        ((0, 10, MAX_LR), {"warmup_fraction": 0.0}, "warmup_fraction"),
        ((0, 10, MAX_LR), {"warmup_fraction": 1.0}, "warmup_fraction"),
        ((0, 10, MAX_LR), {"start_div": 0.0}, "start_div"),
        ((0, 10, MAX_LR), {"end_div": -1.0}, "end_div"),
    ],
)
def test_invalid_lr_arguments_raise_naming_them(
    args: tuple[int, int, float], kwargs: dict[str, float], name: str
) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        one_cycle_lr(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"low": 0.96}, "low="), ({"high": 1.0}, "high="), ({"low": -0.1}, "low=")],
)
def test_invalid_momentum_arguments_raise_naming_them(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        one_cycle_momentum(0, 10, **kwargs)


def test_momentum_goes_down_at_the_peak_and_back() -> None:
    momenta = [one_cycle_momentum(step, 101) for step in range(101)]
    assert momenta[0] == pytest.approx(0.95)
    assert momenta[30] == pytest.approx(0.85)
    assert momenta[100] == pytest.approx(0.95)
    assert int(np.argmin(momenta)) == 30
    assert np.all(np.diff(momenta[:31]) < 0)
    assert np.all(np.diff(momenta[30:]) > 0)


@pytest.mark.parametrize("total", TOTALS)
def test_schedule_matches_the_function_at_every_step(total: int) -> None:
    steps, values = _graph_values(OneCycleSchedule(total, MAX_LR), total)
    expected = [one_cycle_lr(int(s), total, MAX_LR) for s in steps]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


@pytest.mark.parametrize("total", TOTALS)
def test_momentum_schedule_matches_the_function_at_every_step(total: int) -> None:
    steps, values = _graph_values(OneCycleMomentum(total), total)
    expected = [one_cycle_momentum(int(s), total) for s in steps]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_schedule_with_custom_arguments_matches_the_function() -> None:
    kwargs = {"warmup_fraction": 0.25, "start_div": 10.0, "end_div": 1e4}
    steps, values = _graph_values(OneCycleSchedule(40, 2.0, **kwargs), 40)
    expected = [one_cycle_lr(int(s), 40, 2.0, **kwargs) for s in steps]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_schedule_drives_an_optimizer_from_its_step() -> None:
    optimizer = keras.optimizers.SGD(learning_rate=OneCycleSchedule(10, MAX_LR))
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    optimizer.iterations.assign(3)
    assert float(optimizer.learning_rate) == pytest.approx(one_cycle_lr(3, 10, MAX_LR), rel=1e-6)


def test_schedule_serializes_and_deserializes() -> None:
    schedule = OneCycleSchedule(50, 0.3, warmup_fraction=0.4, start_div=20.0, end_div=500.0)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, OneCycleSchedule)
    assert restored.get_config() == schedule.get_config()
    _, original_values = _graph_values(schedule, 50)
    _, restored_values = _graph_values(restored, 50)
    np.testing.assert_array_equal(restored_values, original_values)


def test_schedule_survives_an_optimizer_round_trip() -> None:
    optimizer = keras.optimizers.SGD(learning_rate=OneCycleSchedule(50, 0.3))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    restored.build([keras.Variable(np.zeros(2, np.float32))])
    restored.iterations.assign(7)
    assert float(restored.learning_rate) == pytest.approx(one_cycle_lr(7, 50, 0.3), rel=1e-6)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: OneCycleSchedule(0, MAX_LR), "total_steps="),
        (lambda: OneCycleSchedule(10, -1.0), "max_lr="),
        (lambda: OneCycleMomentum(0), "total_steps="),
        (lambda: OneCycleMomentum(10, low=0.99), "low="),
        (lambda: OneCycleScheduler(10, 0.0), "max_lr="),
    ],
)
def test_constructors_reject_invalid_arguments(make: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make()


def test_scheduler_sets_and_records_the_lr_before_each_batch() -> None:
    keras.utils.set_random_seed(0)
    model = build_model(learning_rate=0.5)
    scheduler = OneCycleScheduler(total_steps=6, max_lr=MAX_LR)
    scheduler.set_model(model)
    for batch in range(8):
        scheduler.on_train_batch_begin(batch % 3)
        expected = one_cycle_lr(batch, 6, MAX_LR)
        assert float(model.optimizer.learning_rate) == pytest.approx(expected, rel=1e-6)
    # Steps count across epochs (batch restarts at 0), and past the end the LR stays final.
    assert scheduler.lrs == _lrs(6, extra=2).tolist()
    assert scheduler.lrs[-1] == scheduler.lrs[-3] == pytest.approx(MAX_LR / 1000)
