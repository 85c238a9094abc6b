"""Study files: parse, validate and resolve them into a frozen configuration.

A study file is TOML with four sections, ``[study]``, ``[data]``, ``[train]`` and ``[space]``.
Settings resolve in this order: command-line options, then the environment (``TUNER_STORAGE``),
then the study file, then the defaults below. Every problem is a :class:`ConfigError` whose
one-line message names the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_PARAMS",
    "DataSettings",
    "Overrides",
    "StudyConfig",
    "StudySettings",
    "TrainSettings",
    "load_study_config",
    "parse_study_config",
]

STORAGE_ENV = "TUNER_STORAGE"

SAMPLERS = ("random", "tpe")
PRUNERS = ("none", "median", "hyperband")
SCHEDULES = ("one_cycle", "constant")
# 1-Cycle warms up over this share of the steps (the notebook's); tuner.one_cycle uses it.
ONE_CYCLE_WARMUP_FRACTION = 0.3
OPTIMIZERS = ("sgd", "nesterov", "adam")
LR_SUGGESTIONS = ("min_div_10", "steepest", "valley")
# Keras 3 activation names; tests check that Keras accepts each of them.
ACTIVATIONS = (
    "relu",
    "tanh",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "mish",
    "sigmoid",
    "hard_sigmoid",
    "softplus",
    "softsign",
    "leaky_relu",
    "relu6",
    "linear",
    "exponential",
)

# The notebook's build_model defaults, used for any parameter the [space] leaves out.
DEFAULT_PARAMS: Mapping[str, Any] = {
    "learning_rate": 0.01,
    "n_hidden": 1,
    "n_neurons": 30,
    "batch_size": 32,
    "activation": "relu",
}


@dataclass(frozen=True)
class StudySettings:
    """The ``[study]`` section: what to optimize where, and how workers behave.

    Args:
        name: The Optuna study name.
        sampler: ``random`` or ``tpe``.
        pruner: ``none``, ``median`` or ``hyperband``.
        n_trials: The total number of trials, across all workers.
        seed: The study seed; each worker's sampler seed is derived from it.
        storage: A SQLAlchemy URL. Relative SQLite paths are relative to the working directory.
        artifact_dir: Where trial artifacts (curves) are stored. Defaults to a folder beside
            a SQLite database, or ``artifacts/<name>`` for a server database.
        heartbeat_interval: Seconds between a running trial's heartbeats.
        grace_period: Seconds without a heartbeat after which a trial counts as dead.
        max_retries: How often a trial whose worker died is run again.
        max_consecutive_failures: A worker stops after this many failed trials in a row.
    """

    name: str
    storage: str
    sampler: str = "random"
    pruner: str = "median"
    n_trials: int = 50
    seed: int = 42
    artifact_dir: str | None = None
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retries: int = 3
    max_consecutive_failures: int = 10


@dataclass(frozen=True)
class DataSettings:
    """The ``[data]`` section: which data, and how it is split.

    Args:
        source: ``california_housing`` or the path of a CSV file.
        target: The CSV column to predict. Required for a CSV source.
        features: The CSV columns to use as inputs. Defaults to every other column.
        test_size: The test fraction of all rows. Defaults to 0.2.
        valid_size: The validation fraction of the rows left after the test split.
            Defaults to 0.25.
        random_state: The seed of both splits. Defaults to 42.
        data_home: scikit-learn's download folder. Defaults to ``SCIKIT_LEARN_DATA``,
            else ``~/scikit_learn_data``.
    """

    source: str = "california_housing"
    target: str | None = None
    features: tuple[str, ...] | None = None
    test_size: float = 0.2
    valid_size: float = 0.25
    random_state: int = 42
    data_home: str | None = None


@dataclass(frozen=True)
class TrainSettings:
    """The ``[train]`` section: how each trial trains.

    Args:
        epochs: The most epochs a trial trains for.
        schedule: ``one_cycle`` (the sampled learning rate is the peak) or ``constant``.
        early_stopping_patience: Epochs without a better validation MSE before stopping.
        lr_finder: Run an LR range test in every trial and set the peak LR from it.
        lr_suggestion: The rule that turns the range test into an LR:
            ``min_div_10`` (the notebook's), ``steepest`` or ``valley``.
        cycle_momentum: Cycle momentum (or Adam's beta_1) inversely to the 1-Cycle LR.
    """

    epochs: int = 30
    schedule: str = "one_cycle"
    early_stopping_patience: int = 5
    lr_finder: bool = False
    lr_suggestion: str = "min_div_10"
    cycle_momentum: bool = True


@dataclass(frozen=True)
class StudyConfig:
    """A resolved study file.

    Args:
        path: The study file it came from.
        study: The ``[study]`` settings.
        data: The ``[data]`` settings.
        train: The ``[train]`` settings.
        space: Each hyperparameter's Optuna distribution. A fixed value is a
            one-choice :class:`~optuna.distributions.CategoricalDistribution`.
    """

    path: Path
    study: StudySettings
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    space: Mapping[str, BaseDistribution] = field(default_factory=dict)

    @property
    def artifact_dir(self) -> Path:
        """The folder that holds this study's trial artifacts."""
        if self.study.artifact_dir is not None:
            return Path(self.study.artifact_dir)
        sqlite_path = _sqlite_path(self.study.storage)
        if sqlite_path is not None:
            return sqlite_path.with_name(sqlite_path.stem + "_artifacts")
        return Path("artifacts") / self.study.name


@dataclass(frozen=True)
class Overrides:
    """Settings given on the command line; ``None`` means "not given"."""

    storage: str | None = None
    study_name: str | None = None
    n_trials: int | None = None


def load_study_config(
    path: str | Path,
    overrides: Overrides | None = None,
    environ: Mapping[str, str] | None = None,
) -> StudyConfig:
    """Reads and resolves a study file.

    Args:
        path: The study file.
        overrides: Command-line settings, which win over everything else.
        environ: The environment to read ``TUNER_STORAGE`` from. Defaults to ``os.environ``.

    Returns:
        The resolved configuration.

    Raises:
        ConfigError: The file is missing, is not TOML, or holds an invalid setting.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"study file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"study file '{path}' is a directory, not a TOML file.") from None
    except PermissionError:
        raise ConfigError(f"study file '{path}' cannot be read: permission denied.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}.") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply.") from None
    return parse_study_config(raw, path, overrides, environ)


def parse_study_config(
    raw: Mapping[str, Any],
    path: str | Path,
    overrides: Overrides | None = None,
    environ: Mapping[str, str] | None = None,
) -> StudyConfig:
    """Validates a parsed study file and resolves it; see :func:`load_study_config`."""
    path = Path(path)
    overrides = overrides or Overrides()
    environ = os.environ if environ is None else environ
    check = _Checker(path)
    check.keys("", raw, ("study", "data", "train", "space"))
    for section in ("study", "data", "train", "space"):
        if section in raw and not isinstance(raw[section], Mapping):
            check.fail(f"[{section}] must be a table, but got {raw[section]!r}")
    study = _parse_study(check, raw.get("study", {}), path, overrides, environ)
    data = _parse_data(check, raw.get("data", {}))
    train = _parse_train(check, raw.get("train", {}))
    space = _parse_space(check, raw.get("space", {}), train)
    return StudyConfig(path=path, study=study, data=data, train=train, space=space)


class _Checker:
    """Builds the one-line messages: file, section, key and value."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.path}: {message}.")

    def keys(self, section: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        where = f"in [{section}]" if section else "at the top level"
        for key in table:
            if key in allowed:
                continue
            # repr: a quoted TOML key may hold any character, a line break too.
            if not section and isinstance(table[key], Mapping):
                expected = ", ".join(f"[{name}]" for name in allowed)
                self.fail(f"unknown section {key!r} at the top level; expected one of: {expected}")
            self.fail(f"unknown key {key!r} {where}; expected one of: {', '.join(allowed)}")

    def value(
        self, section: str, table: Mapping[str, Any], key: str, kind: str, default: Any
    ) -> Any:
        """Returns table[key] checked against kind ('int', 'float', 'str', 'bool')."""
        if key not in table:
            return default
        value = table[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
        }[kind]
        if not ok:
            self.fail(f"[{section}] {key} must be {_KIND_NAMES[kind]}, but got {key} = {value!r}")
        if kind == "float":
            value = float(value)
            if not math.isfinite(value):
                self.fail(f"[{section}] {key} must be finite, but got {key} = {value!r}")
        return value

    def choice(self, section: str, key: str, value: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.fail(
                f"[{section}] {key} must be one of {', '.join(allowed)}, but got {key} = {value!r}"
            )
        return value

    def at_least(self, section: str, key: str, value: float, low: float) -> None:
        if value < low:
            self.fail(f"[{section}] {key} must be >= {low}, but got {key} = {value!r}")

    def fraction(self, section: str, key: str, value: float) -> None:
        if not 0.0 < value < 1.0:
            self.fail(f"[{section}] {key} must be between 0 and 1, but got {key} = {value!r}")


_KIND_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _parse_study(
    check: _Checker,
    table: Mapping[str, Any],
    path: Path,
    overrides: Overrides,
    environ: Mapping[str, str],
) -> StudySettings:
    fields = {f.name: f for f in dataclasses.fields(StudySettings)}
    check.keys("study", table, tuple(fields))
    s = "study"
    name = overrides.study_name or check.value(s, table, "name", "str", path.stem)
    if not name.strip():
        check.fail(f"[study] name must not be empty, but got name = {name!r}")
    default_storage = f"sqlite:///{path.with_suffix('.db').as_posix()}"
    storage = (
        overrides.storage
        or environ.get(STORAGE_ENV)
        or check.value(s, table, "storage", "str", default_storage)
    )
    n_trials = overrides.n_trials
    if n_trials is None:
        n_trials = check.value(s, table, "n_trials", "int", StudySettings.n_trials)
    settings = StudySettings(
        name=name,
        storage=storage,
        sampler=check.choice(
            s, "sampler", check.value(s, table, "sampler", "str", "random"), SAMPLERS
        ),
        pruner=check.choice(s, "pruner", check.value(s, table, "pruner", "str", "median"), PRUNERS),
        n_trials=n_trials,
        seed=check.value(s, table, "seed", "int", StudySettings.seed),
        artifact_dir=check.value(s, table, "artifact_dir", "str", None),
        heartbeat_interval=check.value(
            s, table, "heartbeat_interval", "int", StudySettings.heartbeat_interval
        ),
        grace_period=check.value(s, table, "grace_period", "int", StudySettings.grace_period),
        max_retries=check.value(s, table, "max_retries", "int", StudySettings.max_retries),
        max_consecutive_failures=check.value(
            s, table, "max_consecutive_failures", "int", StudySettings.max_consecutive_failures
        ),
    )
    check.at_least(s, "n_trials", settings.n_trials, 1)
    check.at_least(s, "seed", settings.seed, 0)
    check.at_least(s, "heartbeat_interval", settings.heartbeat_interval, 1)
    check.at_least(s, "max_retries", settings.max_retries, 0)
    check.at_least(s, "max_consecutive_failures", settings.max_consecutive_failures, 1)
    if settings.grace_period <= settings.heartbeat_interval:
        check.fail(
            f"[study] grace_period must be longer than heartbeat_interval "
            f"({settings.heartbeat_interval}), but got grace_period = {settings.grace_period}"
        )
    return settings


def _parse_data(check: _Checker, table: Mapping[str, Any]) -> DataSettings:
    fields = tuple(f.name for f in dataclasses.fields(DataSettings))
    check.keys("data", table, fields)
    s = "data"
    features = table.get("features")
    if features is not None:
        if (
            not isinstance(features, list)
            or not features
            or not all(isinstance(f, str) and f for f in features)
        ):
            check.fail(
                f"[data] features must be a non-empty list of column names, but got "
                f"features = {features!r}"
            )
        if len(set(features)) != len(features):
            check.fail(f"[data] features must not repeat a column, but got features = {features!r}")
        features = tuple(features)
    settings = DataSettings(
        source=check.value(s, table, "source", "str", DataSettings.source),
        target=check.value(s, table, "target", "str", None),
        features=features,
        test_size=check.value(s, table, "test_size", "float", DataSettings.test_size),
        valid_size=check.value(s, table, "valid_size", "float", DataSettings.valid_size),
        random_state=check.value(s, table, "random_state", "int", DataSettings.random_state),
        data_home=check.value(s, table, "data_home", "str", None),
    )
    if not settings.source.strip():
        check.fail("[data] source must be 'california_housing' or a CSV path, but got source = ''")
    check.fraction(s, "test_size", settings.test_size)
    check.fraction(s, "valid_size", settings.valid_size)
    is_csv = settings.source != "california_housing"
    if is_csv and settings.target is None:
        check.fail(
            f"[data] target is required for the CSV source {settings.source!r}; "
            f'name the column to predict, e.g. target = "price"'
        )
    if not is_csv and (settings.target is not None or settings.features is not None):
        check.fail(
            "[data] target and features apply to a CSV source only, "
            "not to source = 'california_housing'"
        )
    if settings.features is not None and settings.target in settings.features:
        check.fail(f"[data] features must not include the target {settings.target!r}")
    return settings


def _parse_train(check: _Checker, table: Mapping[str, Any]) -> TrainSettings:
    fields = tuple(f.name for f in dataclasses.fields(TrainSettings))
    check.keys("train", table, fields)
    s = "train"
    d = TrainSettings()
    settings = TrainSettings(
        epochs=check.value(s, table, "epochs", "int", d.epochs),
        schedule=check.choice(
            s, "schedule", check.value(s, table, "schedule", "str", d.schedule), SCHEDULES
        ),
        early_stopping_patience=check.value(
            s, table, "early_stopping_patience", "int", d.early_stopping_patience
        ),
        lr_finder=check.value(s, table, "lr_finder", "bool", d.lr_finder),
        lr_suggestion=check.choice(
            s,
            "lr_suggestion",
            check.value(s, table, "lr_suggestion", "str", d.lr_suggestion),
            LR_SUGGESTIONS,
        ),
        cycle_momentum=check.value(s, table, "cycle_momentum", "bool", d.cycle_momentum),
    )
    check.at_least(s, "epochs", settings.epochs, 1)
    check.at_least(s, "early_stopping_patience", settings.early_stopping_patience, 0)
    return settings


# Each searchable parameter: its kind and the smallest value it may take.
_PARAM_KINDS: Mapping[str, tuple[str, float | None]] = {
    "learning_rate": ("float", None),
    "lr_factor": ("float", None),
    "n_hidden": ("int", 1),
    "n_neurons": ("int", 1),
    "batch_size": ("int", 1),
    "activation": ("str", None),
    "optimizer": ("str", None),
}
_STR_CHOICES: Mapping[str, tuple[str, ...]] = {"activation": ACTIVATIONS, "optimizer": OPTIMIZERS}


def _parse_space(
    check: _Checker, table: Mapping[str, Any], train: TrainSettings
) -> dict[str, BaseDistribution]:
    check.keys("space", table, tuple(_PARAM_KINDS))
    if train.lr_finder and "learning_rate" in table:
        check.fail(
            "[space] learning_rate does not apply with [train] lr_finder = true; the "
            "range test sets the LR, so search lr_factor instead"
        )
    if not train.lr_finder and "lr_factor" in table:
        check.fail("[space] lr_factor needs [train] lr_finder = true")
    defaults = dict(DEFAULT_PARAMS)
    if train.lr_finder:
        del defaults["learning_rate"]
        defaults["lr_factor"] = 1.0
    space: dict[str, BaseDistribution] = {}
    for name in tuple(defaults) + tuple(k for k in table if k not in defaults):
        spec = table.get(name, defaults.get(name))
        space[name] = _parse_param(check, name, spec)
    return space


def _parse_param(check: _Checker, name: str, spec: Any) -> BaseDistribution:
    kind, minimum = _PARAM_KINDS[name]
    where = f"[space] {name}"
    if not isinstance(spec, Mapping):
        value = _check_param_value(check, name, spec, kind, minimum)
        return CategoricalDistribution([value])
    if "choices" in spec:
        check.keys(f"space.{name}", spec, ("choices",))
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            check.fail(f"{where} choices must be a non-empty list, but got choices = {choices!r}")
        values = [_check_param_value(check, name, c, kind, minimum) for c in choices]
        if len(set(values)) != len(values):
            check.fail(f"{where} choices must be distinct, but got choices = {choices!r}")
        return CategoricalDistribution(values)
    if kind == "str":
        check.fail(f"{where} takes a value or {{ choices = [...] }}, but got {dict(spec)!r}")
    check.keys(f"space.{name}", spec, ("low", "high", "log", "step"))
    for bound in ("low", "high"):
        if bound not in spec:
            check.fail(f"{where} needs both low and high, or choices, but got {dict(spec)!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        check.fail(f"{where} log must be true or false, but got log = {log!r}")
    low = spec["low"]
    # Before the checks of the value alone, which would not say that log is the reason.
    if log and isinstance(low, int | float) and not isinstance(low, bool) and low <= 0:
        check.fail(f"{where}.low must be > 0 with log = true, but got {low!r}")
    low = _check_param_value(check, name, low, kind, minimum, key="low")
    high = _check_param_value(check, name, spec["high"], kind, minimum, key="high")
    if low > high:
        check.fail(f"{where} low must be <= high, but got low = {low!r}, high = {high!r}")
    step = spec.get("step")
    if step is not None:
        step_ok = isinstance(step, int | float) and not isinstance(step, bool) and step > 0
        if kind == "int":
            step_ok = step_ok and isinstance(step, int)
        if not step_ok:
            check.fail(f"{where} step must be a positive {kind}, but got step = {step!r}")
        if log:
            check.fail(f"{where} cannot combine log = true with a step, but got step = {step!r}")
    if kind == "int":
        return IntDistribution(low, high, log=log, step=step or 1)
    try:
        return FloatDistribution(low, high, log=log, step=step)
    except ArithmeticError:  # Optuna's decimal arithmetic on the step overflows.
        check.fail(f"{where} step = {step!r} cuts {low!r}..{high!r} into too many steps")


def _check_param_value(
    check: _Checker, name: str, value: Any, kind: str, minimum: float | None, key: str = ""
) -> Any:
    label = f"{name}.{key}" if key else name
    where = f"[space] {label}"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            check.fail(f"{where} must be an integer, but got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            check.fail(f"{where} must be a number, but got {value!r}")
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            check.fail(f"{where} must be a positive number, but got {value!r}")
    else:
        allowed = _STR_CHOICES[name]
        if value not in allowed:
            check.fail(f"{where} must be one of {', '.join(allowed)}, but got {value!r}")
        return value
    if minimum is not None and value < minimum:
        check.fail(f"{where} must be >= {minimum}, but got {value!r}")
    return value


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)
