from __future__ import annotations

import inspect
import math
from typing import Any

import keras
import numpy as np
import pytest

from tuner.model import NESTEROV_MOMENTUM, build_model, make_optimizer
from tuner.one_cycle import OneCycleSchedule


def _hidden(model: keras.Sequential) -> list[keras.layers.Dense]:
    return model.layers[:-1]


def test_defaults_are_the_notebooks() -> None:
    defaults = {
        name: p.default
        for name, p in inspect.signature(build_model).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    assert defaults == {
        "n_hidden": 1,
        "n_neurons": 30,
        "learning_rate": 0.01,
        "activation": "relu",
        "input_shape": (8,),
        "optimizer": "sgd",
    }


def test_default_model_is_a_compiled_sgd_mlp_with_mse_and_mae() -> None:
    model = build_model()
    assert isinstance(model, keras.Sequential)
    assert model.input_shape == (None, 8)
    assert model.output_shape == (None, 1)
    assert [layer.units for layer in model.layers] == [30, 1]
    assert _hidden(model)[0].activation is keras.activations.relu
    assert model.layers[-1].activation is keras.activations.linear
    assert type(model.optimizer) is keras.optimizers.SGD
    assert model.optimizer.momentum == 0.0
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    assert model.loss == "mse"
    x = np.ones((4, 8), np.float32)
    metrics = model.evaluate(x, np.zeros(4, np.float32), verbose=0, return_dict=True)
    assert set(metrics) == {"loss", "mae"}
    prediction = model.predict(x, verbose=0)
    assert metrics["loss"] == pytest.approx(float(np.mean(prediction**2)), rel=1e-5)
    assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(prediction))), rel=1e-5)


def test_layers_units_and_activation_follow_the_arguments() -> None:
    model = build_model(n_hidden=3, n_neurons=7, activation="tanh", input_shape=(5,))
    assert model.input_shape == (None, 5)
    assert [layer.units for layer in model.layers] == [7, 7, 7, 1]
    assert all(layer.activation is keras.activations.tanh for layer in _hidden(model))
    assert model.count_params() == (5 * 7 + 7) + 2 * (7 * 7 + 7) + (7 + 1)


def test_an_int_input_shape_is_one_dimension() -> None:
    assert build_model(input_shape=3).input_shape == (None, 3)


def test_numpy_scalars_from_np_random_choice_are_accepted() -> None:
    # The notebook samples with np.random.choice, which returns NumPy scalars.
    model = build_model(
        n_hidden=np.int64(2),
        n_neurons=np.int64(12),
        learning_rate=np.float64(0.003),
        activation=np.str_("elu"),
        input_shape=(np.int64(4),),
    )
    assert [layer.units for layer in model.layers] == [12, 12, 1]
    assert all(type(layer.units) is int for layer in model.layers)
    assert _hidden(model)[0].activation is keras.activations.elu
    assert float(model.optimizer.learning_rate) == pytest.approx(0.003)
    assert model.input_shape == (None, 4)


def test_whole_floats_count_as_integers() -> None:
    assert [layer.units for layer in build_model(n_neurons=np.float64(16.0)).layers] == [16, 1]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_hidden": 0}, "n_hidden"),
        ({"n_hidden": True}, "n_hidden"),
        ({"n_hidden": "2"}, "n_hidden"),
        ({"n_neurons": -1}, "n_neurons"),
        ({"n_neurons": 2.5}, "n_neurons"),
        ({"n_neurons": True}, "n_neurons"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"learning_rate": True}, "learning_rate"),
        ({"learning_rate": "0.01"}, "learning_rate"),
        ({"activation": "nope"}, "activation"),
        ({"input_shape": ()}, "input_shape"),
        ({"input_shape": (0,)}, "input_shape"),
        ({"optimizer": "rmsprop"}, "optimizer"),
    ],
)
def test_invalid_arguments_raise_naming_them(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        build_model(**kwargs)


def test_nesterov_is_sgd_with_nesterov_momentum() -> None:
    optimizer = build_model(optimizer="nesterov", learning_rate=0.02).optimizer
    assert type(optimizer) is keras.optimizers.SGD
    assert optimizer.nesterov is True
    assert optimizer.momentum == NESTEROV_MOMENTUM == 0.95
    assert float(optimizer.learning_rate) == pytest.approx(0.02)


def test_adam_is_adam() -> None:
    optimizer = build_model(optimizer="adam", learning_rate=0.002).optimizer
    assert type(optimizer) is keras.optimizers.Adam
    assert float(optimizer.learning_rate) == pytest.approx(0.002)


def test_a_schedule_is_accepted_as_the_learning_rate() -> None:
    schedule = OneCycleSchedule(10, 0.1)
    optimizer = make_optimizer("sgd", schedule)
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    assert float(optimizer.learning_rate) == pytest.approx(0.1 / 25, rel=1e-6)


def test_each_call_builds_a_fresh_optimizer() -> None:
    assert build_model().optimizer is not build_model().optimizer
