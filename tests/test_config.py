from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.config import (
    ACTIVATIONS,
    DEFAULT_PARAMS,
    DataSettings,
    Overrides,
    StudySettings,
    TrainSettings,
    load_study_config,
)
from tuner.errors import ConfigError

CALIFORNIA = Path(__file__).resolve().parents[1] / "studies" / "california.toml"


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path, overrides: Overrides | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_study_config(path, overrides, environ={})
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_the_california_study_parses_to_its_settings_and_distributions() -> None:
    config = load_study_config(CALIFORNIA, environ={})
    assert config.path == CALIFORNIA
    assert config.study == StudySettings(
        name="california",
        storage="sqlite:///studies/california.db",
        sampler="random",
        pruner="median",
        n_trials=50,
        seed=42,
    )
    assert config.data == DataSettings(source="california_housing")
    assert config.train == TrainSettings(epochs=30, schedule="one_cycle", early_stopping_patience=5)
    assert dict(config.space) == {
        "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
        "n_hidden": IntDistribution(1, 5),
        "n_neurons": IntDistribution(32, 512, log=True),
        "batch_size": CategoricalDistribution([16, 32, 64, 128, 256]),
        "activation": CategoricalDistribution(["relu", "tanh", "elu"]),
    }
    assert config.artifact_dir == Path("studies/california_artifacts")


def test_the_lr_finder_study_searches_a_factor_of_each_trials_suggestion() -> None:
    config = load_study_config(CALIFORNIA.with_name("california_lr_finder.toml"), environ={})
    assert config.study.name == "california_lr_finder"
    assert config.train == TrainSettings(
        epochs=30, schedule="one_cycle", early_stopping_patience=5, lr_finder=True
    )
    assert "learning_rate" not in config.space
    assert config.space["lr_factor"] == FloatDistribution(1.0, 30.0, log=True)
    assert config.space["optimizer"] == CategoricalDistribution(["sgd", "nesterov", "adam"])


def test_an_empty_file_takes_every_default(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    config = load_study_config(path, environ={})
    assert config.study == StudySettings(name="study", storage=f"sqlite:///{tmp_path}/study.db")
    assert config.data == DataSettings()
    assert config.train == TrainSettings()
    assert dict(config.space) == {
        name: CategoricalDistribution([value]) for name, value in DEFAULT_PARAMS.items()
    }
    assert DEFAULT_PARAMS == {
        "learning_rate": 0.01,
        "n_hidden": 1,
        "n_neurons": 30,
        "batch_size": 32,
        "activation": "relu",
    }
    assert config.artifact_dir == tmp_path / "study_artifacts"


def test_a_literal_fixes_a_parameter_and_omitted_ones_take_the_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[space]\nn_hidden = 3\nactivation = "tanh"\nlearning_rate = 1\n'
        "n_neurons = { low = 8, high = 64, step = 8 }\n"
        'optimizer = { choices = ["sgd", "adam"] }\n',
    )
    space = load_study_config(path, environ={}).space
    assert space["n_hidden"] == CategoricalDistribution([3])
    assert space["activation"] == CategoricalDistribution(["tanh"])
    assert space["learning_rate"] == CategoricalDistribution([1.0])
    assert space["n_neurons"] == IntDistribution(8, 64, step=8)
    assert space["batch_size"] == CategoricalDistribution([DEFAULT_PARAMS["batch_size"]])
    assert space["optimizer"] == CategoricalDistribution(["sgd", "adam"])


def test_lr_finder_searches_lr_factor_instead_of_learning_rate(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "[train]\nlr_finder = true\n[space]\nlr_factor = { low = 0.1, high = 1 }\n"
    )
    config = load_study_config(path, environ={})
    assert config.train.lr_finder is True
    assert "learning_rate" not in config.space
    assert config.space["lr_factor"] == FloatDistribution(0.1, 1.0)


STORAGE_FILE = '[study]\nstorage = "sqlite:///file.db"\nname = "file"\nn_trials = 7\n'


@pytest.mark.parametrize(
    ("file_text", "overrides", "environ", "storage"),
    [
        (STORAGE_FILE, Overrides(), {}, "sqlite:///file.db"),
        (STORAGE_FILE, Overrides(), {"TUNER_STORAGE": "sqlite:///env.db"}, "sqlite:///env.db"),
        (
            STORAGE_FILE,
            Overrides(storage="sqlite:///cli.db"),
            {"TUNER_STORAGE": "sqlite:///env.db"},
            "sqlite:///cli.db",
        ),
        ("", Overrides(), {"TUNER_STORAGE": "postgresql://db/x"}, "postgresql://db/x"),
    ],
)
def test_storage_resolves_cli_then_environment_then_file_then_default(
    tmp_path: Path, file_text: str, overrides: Overrides, environ: dict[str, str], storage: str
) -> None:
    path = _write(tmp_path, file_text)
    assert load_study_config(path, overrides, environ).study.storage == storage


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, STORAGE_FILE)
    study = load_study_config(path, Overrides(study_name="cli", n_trials=3), environ={}).study
    assert (study.name, study.n_trials) == ("cli", 3)
    study = load_study_config(path, environ={}).study
    assert (study.name, study.n_trials) == ("file", 7)


def test_the_real_environment_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNER_STORAGE", "sqlite:///from_env.db")
    path = _write(tmp_path, STORAGE_FILE)
    assert load_study_config(path).study.storage == "sqlite:///from_env.db"


def test_a_server_database_keeps_artifacts_under_the_study_name(tmp_path: Path) -> None:
    path = _write(tmp_path, '[study]\nname = "s"\nstorage = "postgresql://db/x"\n')
    assert load_study_config(path, environ={}).artifact_dir == Path("artifacts/s")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[study\nname = 'x'\n", ["invalid TOML", "line 1"]),
        ("[studdy]\nname = 'x'\n", ["'studdy'", "top level"]),
        ("study = 5\n", ["[study]", "5"]),
        ("[study]\ntrials = 5\n", ["'trials'", "[study]"]),
        ('[study]\nn_trials = "50"\n', ["n_trials", "'50'", "integer"]),
        ("[study]\nn_trials = true\n", ["n_trials", "True", "integer"]),
        ("[study]\nn_trials = 0\n", ["n_trials", "= 0"]),
        ("[study]\nn_trials = -3\n", ["n_trials", "= -3"]),
        ('[study]\nsampler = "grid"\n', ["sampler", "'grid'", "random, tpe"]),
        ('[study]\npruner = "asha"\n', ["pruner", "'asha'"]),
        (
            "[study]\nheartbeat_interval = 30\ngrace_period = 30\n",
            ["grace_period", "= 30", "heartbeat_interval"],
        ),
        ('[data]\nsource = "houses.csv"\n', ["target", "'houses.csv'"]),
        ('[data]\ntest_size = "0.2"\n', ["test_size", "'0.2'"]),
        ("[data]\ntest_size = 1.5\n", ["test_size", "1.5"]),
        ("[train]\nepochs = 0\n", ["epochs", "= 0"]),
        ('[train]\nschedule = "cosine"\n', ["schedule", "'cosine'", "one_cycle"]),
        ('[train]\nlr_suggestion = "best"\n', ["lr_suggestion", "'best'"]),
        ("[space]\nlearning_rate = { low = 0.1, high = 0.01 }\n", ["learning_rate", "0.1", "0.01"]),
        ("[space]\nn_hidden = { low = 5, high = 2 }\n", ["n_hidden", "low = 5", "high = 2"]),
        (
            "[space]\nlearning_rate = { low = 0.0, high = 0.1, log = true }\n",
            ["learning_rate.low", "0.0"],
        ),
        ("[space]\nn_neurons = { low = 0, high = 64, log = true }\n", ["n_neurons.low", "0"]),
        ("[space]\nactivation = { choices = [] }\n", ["activation", "choices = []"]),
        ('[space]\nactivation = "nope"\n', ["activation", "'nope'", "relu"]),
        ('[space]\nactivation = { choices = ["relu", "nope"] }\n', ["activation", "'nope'"]),
        ("[space]\nn_hidden = 2.5\n", ["n_hidden", "2.5"]),
        ("[space]\nn_hidden = true\n", ["n_hidden", "True"]),
        ("[space]\nwidth = 3\n", ["'width'", "[space]"]),
        ("[space]\nlr_factor = 0.5\n", ["lr_factor", "lr_finder"]),
    ],
)
def test_each_invalid_setting_is_one_line_naming_file_key_and_value(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    message = _error(_write(tmp_path, text))
    for fragment in fragments:
        assert fragment in message


def test_an_invalid_cli_override_is_a_config_error(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, ""), overrides=Overrides(n_trials=0))
    assert "n_trials = 0" in message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    message = _error(tmp_path / "absent.toml")
    assert "does not exist" in message


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[study]\nname = '\xe9'\n")
    assert "UTF-8" in _error(path)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_is_a_keras_activation(name: str) -> None:
    assert callable(keras.activations.get(name))


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainSettings().epochs = 3  # type: ignore[misc]
