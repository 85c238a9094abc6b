"""Property-based tests of the study-file parser: any input ends in a clean error or a config.

Whatever bytes or TOML a user hands over, ``load_study_config`` either returns a usable
:class:`StudyConfig` or raises a :class:`ConfigError` whose message is one line naming the
file. Any other exception is a crash that would reach the user as a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tuner.config import (
    ACTIVATIONS,
    DataSettings,
    StudyConfig,
    StudySettings,
    TrainSettings,
    load_study_config,
)
from tuner.errors import ConfigError
from tuner.study import settings_record

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SECTION_KEYS: dict[str, list[str]] = {
    "study": [f.name for f in dataclasses.fields(StudySettings)],
    "data": [f.name for f in dataclasses.fields(DataSettings)],
    "train": [f.name for f in dataclasses.fields(TrainSettings)],
    "space": [
        "learning_rate",
        "lr_factor",
        "n_hidden",
        "n_neurons",
        "batch_size",
        "activation",
        "optimizer",
    ],
}
RANGE_KEYS = ["low", "high", "log", "step", "choices"]
# Values the parser knows by name, so that random documents also reach the valid paths.
KNOWN_WORDS = [
    "random",
    "tpe",
    "none",
    "median",
    "hyperband",
    "california_housing",
    "one_cycle",
    "constant",
    "sgd",
    "nesterov",
    "adam",
    "min_div_10",
    "steepest",
    "valley",
    "target",
    *ACTIVATIONS[:4],
]
VALID_DOCUMENT: dict[str, Any] = {
    "study": {"name": "fuzz", "n_trials": 3, "storage": "sqlite:///fuzz.db"},
    "data": {"source": "california_housing"},
    "train": {"epochs": 2},
    "space": {
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
        "n_hidden": {"low": 1, "high": 3},
        "n_neurons": {"choices": [8, 16]},
        "batch_size": 32,
        "activation": {"choices": ["relu", "tanh"]},
    },
}

keys = st.sampled_from(
    [k for section in SECTION_KEYS.values() for k in section] + RANGE_KEYS + list(SECTION_KEYS)
) | st.text(min_size=1, max_size=8)
scalars = (
    st.booleans()
    | st.integers()
    | st.integers(min_value=-3, max_value=600)
    | st.floats()
    | st.sampled_from([0.0, 1e-320, 1e-4, 0.5, 1.0, 1e300])
    | st.text(max_size=12)
    | st.sampled_from(KNOWN_WORDS)
    | st.dates()
    | st.times()
    | st.datetimes(timezones=st.none() | st.just(datetime.UTC))
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
numbers = (
    st.integers(min_value=-2, max_value=2**70)
    | st.floats(min_value=0.0, allow_infinity=False)
    | st.sampled_from([1e-320, 1e-300, 1e-4, 0.1, 1e300])
)
# A range with the keys it takes, some of them missing, each a number or not.
ranges = st.fixed_dictionaries(
    {},
    optional={
        "low": numbers,
        "high": numbers,
        "log": st.booleans() | scalars,
        "step": numbers | scalars,
    },
)
sections = st.sampled_from(list(SECTION_KEYS)) | st.text(min_size=1, max_size=8)
documents = st.dictionaries(
    sections, st.dictionaries(keys, values, max_size=6) | scalars, max_size=5
)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with a few real keys set to random values: deep in the checks."""
    document = json.loads(json.dumps(VALID_DOCUMENT))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        section = draw(st.sampled_from(list(SECTION_KEYS)))
        key = draw(st.sampled_from(SECTION_KEYS[section]))
        table = document.setdefault(section, {})
        choice = draw(st.integers(min_value=0, max_value=2)) if section == "space" else 0
        if choice == 1:
            spec = table.get(key)
            spec = dict(spec) if isinstance(spec, dict) else {}
            spec[draw(st.sampled_from(RANGE_KEYS))] = draw(values)
            table[key] = spec
        elif choice == 2:
            table[key] = draw(ranges)
        else:
            table[key] = draw(values)
    return document


@pytest.fixture(scope="module")
def study_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz") / "study.toml"


def _load(path: Path) -> StudyConfig | None:
    """Loads the file; returns None after checking the ConfigError it raised."""
    try:
        config = load_study_config(path, environ={})
    except ConfigError as e:
        message = str(e)
        assert message.strip() and len(message.splitlines()) == 1, message
        assert str(path) in message
        return None
    # Valid means usable: the settings the study records must serialize.
    json.dumps(settings_record(config))
    assert config.study.n_trials >= 1 and config.train.epochs >= 1
    return config


def _write_toml(path: Path, document: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(document)
    except (TypeError, ValueError):
        assume(False)  # Not representable in TOML, so no user can write it.
    path.write_text(text, encoding="utf-8")


@FUZZ
@given(content=st.binary(max_size=300))
def test_random_bytes_end_in_a_config_error_or_a_config(study_path: Path, content: bytes) -> None:
    study_path.write_bytes(content)
    _load(study_path)


@FUZZ
@given(
    text=st.text(
        alphabet=st.sampled_from(list("[]{}=\"'.,#\n \t-+_0123456789eE:aftrulnsy")), max_size=120
    )
)
def test_toml_like_text_ends_in_a_config_error_or_a_config(study_path: Path, text: str) -> None:
    study_path.write_text(text, encoding="utf-8")
    _load(study_path)


@FUZZ
@given(document=documents)
def test_random_toml_documents_end_in_a_config_error_or_a_config(
    study_path: Path, document: dict[str, Any]
) -> None:
    _write_toml(study_path, document)
    _load(study_path)


@FUZZ
@given(document=mutated_documents())
def test_real_keys_with_random_values_end_in_a_config_error_or_a_config(
    study_path: Path, document: dict[str, Any]
) -> None:
    _write_toml(study_path, document)
    _load(study_path)


@FUZZ
@given(name=st.sampled_from(SECTION_KEYS["space"]), spec=ranges)
def test_any_numeric_range_ends_in_a_config_error_or_a_config(
    study_path: Path, name: str, spec: dict[str, Any]
) -> None:
    _write_toml(study_path, {"train": {"lr_finder": name == "lr_factor"}, "space": {name: spec}})
    _load(study_path)


def test_the_unmutated_document_is_valid(study_path: Path) -> None:
    # Otherwise the mutations above would only ever test the first error.
    _write_toml(study_path, VALID_DOCUMENT)
    assert _load(study_path) is not None


def test_deeply_nested_toml_is_a_config_error(study_path: Path) -> None:
    study_path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert _load(study_path) is None
