from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from tuner.lr_finder import LRFinder, RangeTestResult, exponential_lrs, range_test
from tuner.lr_suggestion import RULES, suggest_lr, suggestion_spread
from tuner.model import build_model

Arrays = tuple[np.ndarray, np.ndarray]


def _model(optimizer: str = "sgd", seed: int = 0) -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    return build_model(n_neurons=16, optimizer=optimizer)


def _twin(model: keras.Sequential, optimizer: str) -> keras.Sequential:
    twin = build_model(n_neurons=16, optimizer=optimizer)
    twin.set_weights(model.get_weights())
    return twin


def _state(model: keras.Model) -> list[np.ndarray]:
    """Every number a range test could change: weights and optimizer variables (LR included)."""
    return [np.array(w) for w in model.get_weights()] + [
        np.array(v.numpy()) for v in model.optimizer.variables
    ]


def _assert_same_state(before: list[np.ndarray], after: list[np.ndarray]) -> None:
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(new, old)


def _scramble_state(model: keras.Model, rng: np.random.Generator) -> None:
    """Gives every weight and optimizer variable a random value, as training would."""
    model.optimizer.build(model.trainable_variables)
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
    for variable in model.optimizer.variables:
        value = rng.uniform(0.01, 0.1, size=variable.shape)
        variable.assign(np.asarray(value if "float" in variable.dtype else 7, variable.dtype))


def _finder(
    model: keras.Model, steps: int | None, *, fit_steps: int = 8, epochs: int = 1
) -> LRFinder:
    finder = LRFinder(min_lr=1e-4, max_lr=1.0, steps=steps)
    finder.set_model(model)
    finder.set_params({"steps": fit_steps, "epochs": epochs, "verbose": 0})
    model.stop_training = False
    return finder


def _feed(finder: LRFinder, batch_losses: list[float], epoch: int = 0) -> None:
    """Calls the batch hook with Keras 3's logs: the running mean of the epoch's losses."""
    finder.on_epoch_begin(epoch)
    for batch in range(len(batch_losses)):
        finder.on_train_batch_end(batch, {"loss": float(np.mean(batch_losses[: batch + 1]))})
        if finder.model.stop_training:
            return


# exponential_lrs


def test_exponential_lrs_run_from_min_to_max_with_a_constant_ratio() -> None:
    lrs = exponential_lrs(1e-5, 10.0, 61)
    assert len(lrs) == 61
    assert lrs[0] == pytest.approx(1e-5, rel=1e-12)
    assert lrs[-1] == pytest.approx(10.0, rel=1e-12)
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, 10.0 ** (6 / 60), rtol=1e-12)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 1.0, 10), "min_lr=0.0"),
        ((1.0, 1.0, 10), "max_lr=1.0"),
        ((1.0, 0.1, 10), "max_lr=0.1"),
        ((1e-3, 1.0, 1), "steps=1"),
    ],
)
def test_exponential_lrs_reject_invalid_bounds(args: tuple[float, float, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        exponential_lrs(*args)


def test_finder_rejects_invalid_bounds_when_constructed() -> None:
    with pytest.raises(ValueError, match="min_lr"):
        LRFinder(min_lr=1.0, max_lr=0.1, steps=10)


# LRFinder, hooks called directly


def test_finder_records_lrs_and_recovers_per_batch_losses() -> None:
    model = _model()
    finder = _finder(model, steps=5)
    finder.on_train_begin()
    schedule = exponential_lrs(1e-4, 1.0, 5)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4, rel=1e-6)
    _feed(finder, [4.0, 2.0, 3.0])
    assert finder.losses == pytest.approx([4.0, 2.0, 3.0], rel=1e-12)
    assert finder.lrs == pytest.approx(schedule[:3].tolist(), rel=1e-12)
    # The LR is multiplied after every batch: the next batch runs at the 4th LR.
    assert float(model.optimizer.learning_rate) == pytest.approx(schedule[3], rel=1e-6)
    assert not model.stop_training
    np.testing.assert_allclose(finder.result.lrs, schedule[:3])
    np.testing.assert_allclose(finder.result.losses, [4.0, 2.0, 3.0])


def test_finder_stops_once_the_loss_passes_4x_the_best() -> None:
    model = _model()
    finder = _finder(model, steps=8)
    finder.on_train_begin()
    _feed(finder, [2.0, 1.0, 4.0, 3.0, 4.5, 1.0])
    # 4.0 is not more than 4 x 1.0, so the sweep goes on; 4.5 is, and it stops there.
    assert model.stop_training
    assert finder.losses == pytest.approx([2.0, 1.0, 4.0, 3.0, 4.5])
    assert len(finder.lrs) == 5


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_finder_stops_on_a_non_finite_loss(bad: float) -> None:
    model = _model()
    finder = _finder(model, steps=8)
    finder.on_train_begin()
    _feed(finder, [2.0, bad, 1.0])
    assert model.stop_training
    assert len(finder.losses) == 2
    assert not math.isfinite(finder.losses[-1])


def test_finder_stops_before_the_lr_would_pass_max_lr() -> None:
    model = _model()
    finder = _finder(model, steps=3)
    finder.on_train_begin()
    _feed(finder, [3.0, 2.0, 1.0, 0.5])
    assert model.stop_training
    assert finder.lrs == pytest.approx([1e-4, 1e-2, 1.0])
    assert float(model.optimizer.learning_rate) == pytest.approx(1.0, rel=1e-6)


def test_finder_defaults_to_every_batch_of_the_fit_across_epochs() -> None:
    model = _model()
    finder = _finder(model, steps=None, fit_steps=3, epochs=2)
    finder.on_train_begin()
    _feed(finder, [5.0, 4.0, 3.0], epoch=0)
    assert not model.stop_training
    # The running mean restarts each epoch; so must the recovery of per-batch losses.
    _feed(finder, [2.0, 1.5, 1.0], epoch=1)
    assert model.stop_training
    assert finder.losses == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.5, 1.0])
    np.testing.assert_allclose(finder.lrs, exponential_lrs(1e-4, 1.0, 6))


@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_finder_restores_weights_and_optimizer_state_at_the_end(
    optimizer: str, rng: np.random.Generator
) -> None:
    model = _model(optimizer)
    _scramble_state(model, rng)
    before = _state(model)
    finder = _finder(model, steps=8)
    finder.on_train_begin()
    _scramble_state(model, rng)  # what the sweep's batches would do
    assert not np.array_equal(_state(model)[0], before[0])
    finder.on_train_end()
    _assert_same_state(before, _state(model))


# range_test, the compiled sweep


@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_range_test_leaves_weights_and_optimizer_state_unchanged(
    optimizer: str, tiny_regression: Arrays, rng: np.random.Generator
) -> None:
    model = _model(optimizer)
    _scramble_state(model, rng)
    slots = [v for v in model.optimizer.variables if "momentum" in v.name or "velocity" in v.name]
    assert slots  # momenta (and Adam's velocities) exist and hold non-zero values
    before = _state(model)
    x, y = tiny_regression
    result = range_test(model, x, y, batch_size=8, min_lr=1e-4, max_lr=1.0, steps=12, seed=1)
    assert len(result.losses) > 1
    _assert_same_state(before, _state(model))


def test_range_test_stops_once_the_loss_passes_4x_the_best(tiny_regression: Arrays) -> None:
    x, y = tiny_regression
    model = _model()
    result = range_test(model, x, y, batch_size=8, min_lr=1e-3, max_lr=1e4, steps=60, seed=0)
    n = len(result.losses)
    assert 1 < n < 60
    last, earlier = result.losses[-1], result.losses[:-1]
    assert not math.isfinite(last) or last > 4 * earlier.min()
    # It did not run past an earlier explosion either.
    assert np.all(np.isfinite(earlier))
    assert np.all(earlier[1:] <= 4 * np.minimum.accumulate(earlier)[:-1])
    np.testing.assert_allclose(result.lrs, exponential_lrs(1e-3, 1e4, 60)[:n], rtol=1e-12)


def test_range_test_without_divergence_runs_one_epoch_by_default(tiny_regression: Arrays) -> None:
    x, y = tiny_regression
    result = range_test(_model(), x, y, batch_size=16, min_lr=1e-5, max_lr=1e-3)
    assert len(result.losses) == len(result.lrs) == 4  # 64 rows / 16
    assert result.lrs[-1] == pytest.approx(1e-3)
    assert np.all(np.isfinite(result.losses))


@pytest.mark.parametrize(
    ("optimizer", "max_lr"),
    [("sgd", 100.0), ("adam", 1.0)],
)
def test_the_lr_finders_sweep_matches_the_notebooks(
    optimizer: str, max_lr: float, tiny_regression: Arrays
) -> None:
    # The notebook: model.fit with the callback. tuner: one compiled call. Same start,
    # same batches (64 rows, 8 per batch: the per-batch loss recovery is exact).
    x, y = tiny_regression
    notebook_model = _model(optimizer)
    tuner_model = _twin(notebook_model, optimizer)
    for model in (notebook_model, tuner_model):
        model.optimizer.build(model.trainable_variables)  # so that Adam's slots exist
    before = _state(notebook_model)
    finder = LRFinder(min_lr=1e-4, max_lr=max_lr, steps=8)
    notebook_model.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[finder], verbose=0)
    result = range_test(
        tuner_model, x, y, batch_size=8, min_lr=1e-4, max_lr=max_lr, steps=8, shuffle=False
    )
    assert len(result.lrs) == len(finder.lrs)
    if max_lr == 100.0:
        assert len(result.lrs) < 8  # both stopped early, at the same step
    else:
        assert len(result.lrs) == 8
    np.testing.assert_allclose(result.lrs, finder.lrs, rtol=1e-6)
    np.testing.assert_allclose(result.losses, finder.losses, rtol=1e-3)
    # Both leave their model as it came in.
    _assert_same_state(before, _state(notebook_model))
    _assert_same_state(before, _state(tuner_model))


def test_a_sweep_longer_than_an_epoch_starts_over_like_model_fit(tiny_regression: Arrays) -> None:
    # 60 rows in batches of 16: three full batches and one of 12, twice. The finder's loss
    # for the short batch is not exact (Keras weights the running mean by rows), so only
    # the full batches are compared; they depend on the short batch having been the same.
    x, y = tiny_regression[0][:60], tiny_regression[1][:60]
    notebook_model = _model()
    tuner_model = _twin(notebook_model, "sgd")
    finder = LRFinder(min_lr=1e-4, max_lr=0.1, steps=8)
    notebook_model.fit(x, y, batch_size=16, epochs=2, shuffle=False, callbacks=[finder], verbose=0)
    result = range_test(
        tuner_model, x, y, batch_size=16, min_lr=1e-4, max_lr=0.1, steps=8, shuffle=False
    )
    assert len(result.lrs) == len(finder.lrs) == 8
    full = [0, 1, 2, 4, 5, 6]
    np.testing.assert_allclose(result.losses[full], np.array(finder.losses)[full], rtol=1e-3)


def test_result_suggestions_use_the_rules() -> None:
    lrs = np.logspace(-5, 1, 100)
    losses = (np.log10(lrs) + 2.0) ** 2 + 1.0
    result = RangeTestResult(lrs=lrs, losses=losses)
    suggestions = result.suggestions(skip_start=0, skip_end=0)
    assert tuple(suggestions) == RULES
    for rule, lr in suggestions.items():
        assert lr == suggest_lr(lrs, losses, rule, skip_start=0, skip_end=0)
    assert result.suggest() == suggest_lr(lrs, losses)
    assert RangeTestResult.spread(suggestions) == suggestion_spread(suggestions)
