from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from tuner.model import build_model
from tuner.one_cycle import OneCycleMomentum, OneCycleSchedule, one_cycle_lr, one_cycle_momentum
from tuner.training import TrainingDivergedError, fit

Arrays = tuple[np.ndarray, np.ndarray]


def _model(seed: int = 0, **kwargs: Any) -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    return build_model(n_neurons=16, **kwargs)


def _mse_mae(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    error = model.predict(x, verbose=0).ravel().astype(np.float64) - y
    return float(np.mean(error**2)), float(np.mean(np.abs(error)))


class _EveryEpoch(keras.callbacks.Callback):
    """Records the weights and the optimizer's momentum-like variable after each epoch."""

    def __init__(self, attribute: str | None = None) -> None:
        super().__init__()
        self.attribute = attribute
        self.weights: list[list[np.ndarray]] = []
        self.values: list[float] = []
        self.logs: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.weights.append(self.model.get_weights())
        self.logs.append(dict(logs or {}))
        if self.attribute is not None:
            self.values.append(float(getattr(self.model.optimizer, self.attribute).numpy()))


def test_history_has_one_entry_per_epoch_and_scores_validation_like_numpy(
    tiny_regression: Arrays,
) -> None:
    x, y = tiny_regression
    model = _model()
    history = fit(model, x, y, validation_data=(x[:40], y[:40]), epochs=3, batch_size=16, seed=0)
    assert history.epochs == 3
    assert len(history.loss) == len(history.val_loss) == len(history.val_mae) == 3
    assert len(history.lr) == 3
    assert history.loss[-1] < history.loss[0]
    mse, mae = _mse_mae(model, x[:40], y[:40])
    assert history.val_loss[-1] == pytest.approx(mse, rel=1e-5)
    assert history.val_mae[-1] == pytest.approx(mae, rel=1e-5)
    assert history.best_epoch == int(np.argmin(history.val_loss))
    assert history.best_val_loss == min(history.val_loss)
    assert history.best_val_mae == history.val_mae[history.best_epoch]


def test_epoch_loss_is_the_row_weighted_mean_over_uneven_batches(tiny_regression: Arrays) -> None:
    # With an LR too small to move the weights, the epoch's loss is the training MSE, but
    # only if the short last batch (64 = 24 + 24 + 16) counts by its rows.
    x, y = tiny_regression
    model = _model(learning_rate=1e-12)
    history = fit(model, x, y, validation_data=(x, y), epochs=1, batch_size=24, shuffle=False)
    mse, _ = _mse_mae(model, x, y)
    assert history.loss[0] == pytest.approx(mse, rel=1e-5)
    assert history.val_loss[0] == pytest.approx(mse, rel=1e-5)


def test_early_stopping_restores_the_best_epochs_weights(tiny_regression: Arrays) -> None:
    # The validation target is the negated training target: the better the fit, the worse
    # the validation loss, so the first epoch is the best and patience 2 stops after the 3rd.
    x, y = tiny_regression
    model = _model()
    recorder = _EveryEpoch()
    stopper = keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    history = fit(
        model,
        x,
        y,
        validation_data=(x, -y),
        epochs=10,
        batch_size=16,
        callbacks=[recorder, stopper],
        seed=0,
    )
    assert history.epochs == 3
    assert history.best_epoch == 0
    assert history.val_loss[0] < history.val_loss[1] < history.val_loss[2]
    assert not np.array_equal(recorder.weights[2][0], recorder.weights[0][0])
    for final, best in zip(model.get_weights(), recorder.weights[0], strict=True):
        np.testing.assert_array_equal(final, best)
    assert _mse_mae(model, x, -y)[0] == pytest.approx(history.val_loss[0], rel=1e-5)
    assert set(recorder.logs[0]) == {"loss", "val_loss", "val_mae", "learning_rate"}


def test_one_step_per_epoch_follows_the_one_cycle_function_step_for_step(
    tiny_regression: Arrays,
) -> None:
    # A batch of all 64 rows: epoch e is step e, and history.lr[e] is the LR it used.
    x, y = tiny_regression
    epochs, max_lr = 12, 0.05
    history = fit(
        _model(),
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        batch_size=len(x),
        lr_schedule=OneCycleSchedule(epochs, max_lr),
    )
    expected = [one_cycle_lr(e, epochs, max_lr) for e in range(epochs)]
    np.testing.assert_allclose(history.lr, expected, rtol=1e-6)
    assert int(np.argmax(history.lr)) == 3  # 0.3 * 11 = 3.3


@pytest.mark.parametrize(("batch_size", "steps_per_epoch"), [(16, 4), (24, 3)])
def test_several_steps_per_epoch_follow_the_one_cycle_function(
    tiny_regression: Arrays, batch_size: int, steps_per_epoch: int
) -> None:
    x, y = tiny_regression
    total, max_lr = 20, 0.05  # longer than the run, so the LR is still mid-cycle at the end
    model = _model()
    history = fit(
        model,
        x,
        y,
        validation_data=(x, y),
        epochs=3,
        batch_size=batch_size,
        lr_schedule=OneCycleSchedule(total, max_lr),
        seed=0,
    )
    k = 3 * steps_per_epoch
    assert int(model.optimizer.iterations.numpy()) == k
    assert float(model.optimizer.learning_rate) == pytest.approx(
        one_cycle_lr(k - 1, total, max_lr), rel=1e-6
    )
    ends = [(e + 1) * steps_per_epoch - 1 for e in range(3)]
    np.testing.assert_allclose(
        history.lr, [one_cycle_lr(s, total, max_lr) for s in ends], rtol=1e-6
    )


def test_a_huge_lr_raises_training_diverged(tiny_regression: Arrays) -> None:
    x, y = tiny_regression
    model = _model(learning_rate=1e6)
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        fit(model, x, y, validation_data=(x, y), epochs=3, batch_size=8, seed=0)


@pytest.mark.parametrize(("optimizer", "attribute"), [("nesterov", "momentum"), ("adam", "beta_1")])
def test_momentum_schedule_sets_the_momentum_every_step(
    tiny_regression: Arrays, optimizer: str, attribute: str
) -> None:
    x, y = tiny_regression
    epochs = 6
    recorder = _EveryEpoch(attribute)
    fit(
        _model(optimizer=optimizer, learning_rate=0.001),
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        batch_size=len(x),
        momentum_schedule=OneCycleMomentum(epochs),
        callbacks=[recorder],
    )
    expected = [one_cycle_momentum(e, epochs) for e in range(epochs)]
    np.testing.assert_allclose(recorder.values, expected, rtol=1e-6)
    assert min(recorder.values) < 0.9 < max(recorder.values)


@pytest.mark.parametrize("nesterov", [True, False])
def test_a_constant_momentum_schedule_trains_like_keras_sgd(
    tiny_regression: Arrays, nesterov: bool
) -> None:
    # The scheduled SGD update must be Keras's own: with the schedule pinned at the
    # optimizer's momentum, both runs end with the same weights.
    x, y = tiny_regression
    runs = []
    for schedule in (None, lambda step: keras.ops.convert_to_tensor(0.9, "float32")):
        model = _model()
        model.compile(
            loss="mse", optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=nesterov)
        )
        fit(
            model,
            x,
            y,
            validation_data=(x, y),
            epochs=1,
            batch_size=16,
            shuffle=False,
            momentum_schedule=schedule,
        )
        runs.append(model.get_weights())
    for scheduled, plain in zip(runs[1], runs[0], strict=True):
        np.testing.assert_allclose(scheduled, plain, rtol=1e-6, atol=1e-7)


def test_a_momentum_schedule_needs_momentum(tiny_regression: Arrays) -> None:
    x, y = tiny_regression
    with pytest.raises(ValueError, match="momentum"):
        fit(
            _model(),
            x,
            y,
            validation_data=(x, y),
            epochs=1,
            momentum_schedule=OneCycleMomentum(4),
        )


def test_an_lr_schedule_needs_a_float_optimizer_lr(tiny_regression: Arrays) -> None:
    x, y = tiny_regression
    model = _model(learning_rate=OneCycleSchedule(4, 0.1))
    with pytest.raises(ValueError, match="float learning rate"):
        fit(model, x, y, validation_data=(x, y), epochs=1, lr_schedule=OneCycleSchedule(4, 0.1))


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"epochs": 0}, "epochs=0"), ({"batch_size": 0}, "batch_size=0")]
)
def test_invalid_arguments_raise_naming_them(
    tiny_regression: Arrays, kwargs: dict[str, int], match: str
) -> None:
    x, y = tiny_regression
    arguments: dict[str, Any] = {"epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit(_model(), x, y, validation_data=(x, y), **arguments)
