from __future__ import annotations

import os
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn.datasets._california_housing as california_module
from sklearn.model_selection import train_test_split

from tuner.config import DataSettings
from tuner.data import load_dataset
from tuner.errors import DataError

needs_california = pytest.mark.skipif(
    not os.environ.get("SCIKIT_LEARN_DATA"),
    reason="SCIKIT_LEARN_DATA is not set; point it at a folder holding cal_housing_py3.pkz "
    "(e.g. /work/shared/data/scikit_learn_data) to run the California housing tests offline",
)

WriteCsv = Callable[..., Path]
HEADER = ["a", "b", "c", "price"]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    # load_dataset is cached per settings; every test starts from an empty cache.
    load_dataset.cache_clear()
    yield
    load_dataset.cache_clear()


def _rows(rng: np.random.Generator, n: int = 64) -> list[list[Any]]:
    x = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]
    price = x @ [1.0, 0.1, 0.01] + rng.normal(size=n)
    return [[*row, p] for row, p in zip(x.round(6), price.round(6), strict=True)]


def _csv_error(path: Path, target: str = "price", features: tuple[str, ...] | None = None) -> str:
    with pytest.raises(DataError) as caught:
        load_dataset(DataSettings(source=str(path), target=target, features=features))
    return str(caught.value)


# California housing


@needs_california
def test_california_default_split_is_20_percent_test_then_25_percent_validation() -> None:
    data = load_dataset(DataSettings())
    # 20,640 rows: 4,128 test (20%), then 4,128 validation (25% of the remaining 16,512).
    assert (len(data.y_train), len(data.y_valid), len(data.y_test)) == (12384, 4128, 4128)
    assert len(data.x_train) == 12384


@needs_california
def test_california_with_25_percent_test_gives_the_notebook_sizes() -> None:
    data = load_dataset(DataSettings(test_size=0.25))
    assert (len(data.y_train), len(data.y_valid), len(data.y_test)) == (11610, 3870, 5160)


@needs_california
def test_california_is_8_float32_features_scaled_on_training_rows_only() -> None:
    data = load_dataset(DataSettings())
    assert data.input_shape == (8,)
    assert data.feature_names[0] == "MedInc"
    assert len(data.feature_names) == 8
    assert data.target_name == "MedHouseVal"
    for array in (data.x_train, data.y_train, data.x_valid, data.y_valid, data.x_test):
        assert array.dtype == np.float32
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-4)
    # Scaled with the training statistics, the validation rows are close to but not exactly
    # standard: had the scaler seen them, their mean would be ~0 too.
    valid_mean = np.abs(data.x_valid.mean(axis=0))
    assert valid_mean.max() > 1e-3
    assert valid_mean.max() < 0.2


@needs_california
def test_california_split_is_scikit_learns_with_random_state_42() -> None:
    data = load_dataset(DataSettings())
    raw = california_module.fetch_california_housing(download_if_missing=False)
    rest_x, test_x, rest_y, test_y = train_test_split(
        raw.data, raw.target, test_size=0.2, random_state=42
    )
    train_x, _, train_y, _ = train_test_split(rest_x, rest_y, test_size=0.25, random_state=42)
    np.testing.assert_allclose(data.y_test, test_y, rtol=1e-6)
    np.testing.assert_allclose(data.y_train, train_y, rtol=1e-6)
    np.testing.assert_allclose(data.feature_mean, train_x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        data.x_test, (test_x - train_x.mean(axis=0)) / train_x.std(axis=0), rtol=1e-4, atol=1e-5
    )


def test_california_without_cache_or_network_says_to_set_scikit_learn_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def offline(remote: Any, **kwargs: Any) -> Path:
        calls.append(remote.url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(california_module, "_fetch_remote", offline)
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as caught:
        load_dataset(DataSettings(data_home=str(empty)))
    message = str(caught.value)
    assert len(calls) == 1
    assert "SCIKIT_LEARN_DATA" in message
    assert str(empty) in message
    assert "network is unreachable" in message


@pytest.mark.parametrize(
    "content",
    [b"", b"not a joblib file", b"\x00" * 64, b"\x80\x05garbage", b"x\x9c" + b"\x00" * 50],
    ids=["empty", "text", "zeros", "bad-pickle", "bad-zlib"],
)
def test_an_unreadable_california_cache_says_to_delete_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "cal_housing_py3.pkz").write_bytes(content)
    with pytest.raises(DataError, match="delete cal_housing_py3.pkz"):
        load_dataset(DataSettings(data_home=str(tmp_path)))


# CSV files


def test_a_csv_loads_with_its_target_and_features(
    write_csv: WriteCsv, rng: np.random.Generator
) -> None:
    rows = _rows(rng)
    path = write_csv(HEADER, rows)
    data = load_dataset(DataSettings(source=str(path), target="price"))
    assert data.feature_names == ("a", "b", "c")
    assert data.target_name == "price"
    # 64 rows: 13 test (ceil 20%), then 13 validation (ceil 25% of 51), 38 training.
    assert (len(data.y_train), len(data.y_valid), len(data.y_test)) == (38, 13, 13)
    assert data.x_train.shape == (38, 3)
    assert data.x_train.dtype == data.y_train.dtype == np.float32
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-5)
    table = np.array(rows, dtype=np.float64)
    _, test_x, _, test_y = train_test_split(
        table[:, :3], table[:, 3], test_size=0.2, random_state=42
    )
    np.testing.assert_allclose(data.y_test, test_y, rtol=1e-6)
    np.testing.assert_allclose(
        data.x_test * data.feature_scale + data.feature_mean, test_x, rtol=1e-4
    )


def test_a_csv_can_select_features(write_csv: WriteCsv, rng: np.random.Generator) -> None:
    path = write_csv(HEADER, _rows(rng))
    data = load_dataset(DataSettings(source=str(path), target="a", features=("c", "price")))
    assert data.feature_names == ("c", "price")
    assert data.target_name == "a"
    assert data.input_shape == (2,)


def test_a_missing_csv_says_what_source_may_be(tmp_path: Path) -> None:
    message = _csv_error(tmp_path / "absent.csv")
    assert "absent.csv" in message
    assert "does not exist" in message
    assert "california_housing" in message


def test_an_unknown_target_lists_the_columns(write_csv: WriteCsv, rng: np.random.Generator) -> None:
    message = _csv_error(write_csv(HEADER, _rows(rng)), target="value")
    assert "'value'" in message
    assert "a, b, c, price" in message


def test_an_unknown_feature_is_named(write_csv: WriteCsv, rng: np.random.Generator) -> None:
    message = _csv_error(write_csv(HEADER, _rows(rng)), features=("a", "size"))
    assert "'size'" in message
    assert "a, b, c, price" in message


def test_a_non_numeric_value_names_column_and_line(
    write_csv: WriteCsv, rng: np.random.Generator
) -> None:
    rows = _rows(rng)
    rows[5][1] = "abc"  # data row 5 is line 7: the header is line 1
    message = _csv_error(write_csv(HEADER, rows))
    assert "column 'b'" in message
    assert "line 7" in message
    assert "'abc'" in message


def test_a_missing_value_names_column_and_line(
    write_csv: WriteCsv, rng: np.random.Generator
) -> None:
    rows = _rows(rng)
    rows[9][2] = ""
    rows[20][2] = ""
    message = _csv_error(write_csv(HEADER, rows))
    assert "column 'c'" in message
    assert "2 missing" in message
    assert "line 11" in message


def test_too_few_rows_says_how_many_are_needed(
    write_csv: WriteCsv, rng: np.random.Generator
) -> None:
    # 3 rows leave 1 for training; 4 are the fewest that leave 2, 1 and 1.
    message = _csv_error(write_csv(HEADER, _rows(rng, n=3)))
    assert "3 row(s)" in message
    assert "at least 4" in message
    data = load_dataset(
        DataSettings(source=str(write_csv(HEADER, _rows(rng, n=4), "four.csv")), target="price")
    )
    assert (len(data.y_train), len(data.y_valid), len(data.y_test)) == (2, 1, 1)


def test_results_are_cached_per_settings(write_csv: WriteCsv, rng: np.random.Generator) -> None:
    settings = DataSettings(source=str(write_csv(HEADER, _rows(rng))), target="price")
    assert load_dataset(settings) is load_dataset(settings)
    assert load_dataset(settings) is not load_dataset(
        DataSettings(source=settings.source, target="a")
    )
