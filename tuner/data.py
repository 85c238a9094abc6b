"""Loading, splitting and scaling the data a study trains on.

The split follows the reference notebook: 20% of the rows for the test set, then 25% of the
rest for validation, both with ``random_state=42``. A ``StandardScaler`` is fitted on the
training part only, so neither validation nor test rows leak into the scaling.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle
import urllib.error
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import fetch_california_housing, get_data_home
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from tuner.config import DataSettings
from tuner.errors import DataError

__all__ = ["CALIFORNIA_HOUSING", "Dataset", "load_dataset"]

CALIFORNIA_HOUSING = "california_housing"

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Scaled float32 arrays for training, validation and test, with what produced them.

    Args:
        x_train: Training features, scaled.
        y_train: Training targets.
        x_valid: Validation features, scaled with the training statistics.
        y_valid: Validation targets.
        x_test: Test features, scaled with the training statistics.
        y_test: Test targets.
        feature_names: The feature columns, in order.
        target_name: The target column.
        feature_mean: The scaler's per-feature mean.
        feature_scale: The scaler's per-feature standard deviation.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    feature_mean: np.ndarray
    feature_scale: np.ndarray

    @property
    def input_shape(self) -> tuple[int]:
        """The shape of one input row, for ``build_model``."""
        return (self.x_train.shape[1],)


@functools.lru_cache(maxsize=4)
def load_dataset(settings: DataSettings) -> Dataset:
    """Loads, splits and scales the data that ``settings`` names.

    Results are cached per process, so a worker reads its data once for all its trials.

    Args:
        settings: The study's ``[data]`` section.

    Returns:
        The split, scaled data.

    Raises:
        DataError: The data is missing, unreadable, not numeric, has missing values, or has
            too few rows for the split. The message says what to do.
    """
    if settings.source == CALIFORNIA_HOUSING:
        x, y, names, target = _california_housing(settings.data_home)
        origin = "California housing"
    else:
        x, y, names, target = _csv(Path(settings.source), settings.target, settings.features)
        origin = settings.source
    _check_split_sizes(len(y), settings, origin)
    x_full, x_test, y_full, y_test = train_test_split(
        x, y, test_size=settings.test_size, random_state=settings.random_state
    )
    x_train, x_valid, y_train, y_valid = train_test_split(
        x_full, y_full, test_size=settings.valid_size, random_state=settings.random_state
    )
    scaler = StandardScaler().fit(x_train)
    # Debug: at info it would precede the one-line message of an error that follows.
    _logger.debug(
        "Loaded %s: %d training, %d validation and %d test rows of %d features.",
        origin,
        len(y_train),
        len(y_valid),
        len(y_test),
        len(names),
    )
    return Dataset(
        x_train=scaler.transform(x_train).astype(np.float32),
        y_train=y_train.astype(np.float32),
        x_valid=scaler.transform(x_valid).astype(np.float32),
        y_valid=y_valid.astype(np.float32),
        x_test=scaler.transform(x_test).astype(np.float32),
        y_test=y_test.astype(np.float32),
        feature_names=names,
        target_name=target,
        feature_mean=scaler.mean_.astype(np.float32),
        feature_scale=scaler.scale_.astype(np.float32),
    )


def _california_housing(
    data_home: str | None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    home = get_data_home(data_home)
    try:
        with warnings.catch_warnings():
            # scikit-learn warns before each retry; the error below tells it all in one line.
            warnings.filterwarnings("ignore", "Retry downloading", UserWarning)
            bunch = fetch_california_housing(data_home=data_home, download_if_missing=True)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"California housing is not cached in {home} and could not be downloaded "
            f"({reason}). Connect to the network once, or set SCIKIT_LEARN_DATA (or [data] "
            f"data_home) to a folder that holds cal_housing_py3.pkz."
        ) from None
    except (OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, zlib.error) as e:
        # A corrupt pickle fails in many ways: a bad opcode is a KeyError, bad zlib a zlib.error.
        raise DataError(
            f"California housing cache in {home} is unreadable ({type(e).__name__}: {e}); "
            f"delete cal_housing_py3.pkz there to download it again."
        ) from None
    names = tuple(str(n) for n in bunch.feature_names)
    return np.asarray(bunch.data), np.asarray(bunch.target), names, "MedHouseVal"


def _csv(
    path: Path, target: str | None, features: tuple[str, ...] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    assert target is not None, "config validation requires a target for CSV sources"
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(
            f"data file '{path}' does not exist; [data] source must be "
            f"'{CALIFORNIA_HOUSING}' or the path of a CSV file."
        ) from None
    except IsADirectoryError:
        raise DataError(f"data file '{path}' is a directory, not a CSV file.") from None
    except PermissionError:
        raise DataError(f"data file '{path}' cannot be read: permission denied.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"data file '{path}' is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise DataError(f"data file '{path}' is not valid CSV: {detail}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if target not in columns:
        raise DataError(
            f"target column '{target}' is not in {path}; its columns are: {', '.join(columns)}."
        )
    if features is None:
        features = tuple(c for c in columns if c != target)
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise DataError(
            f"feature column(s) {', '.join(repr(u) for u in unknown)} not in {path}; "
            f"its columns are: {', '.join(columns)}."
        )
    if not features:
        raise DataError(f"{path} has no feature columns besides the target '{target}'.")
    for column in (*features, target):
        _check_numeric(frame[column], column, path)
    x = frame[list(features)].to_numpy(dtype=np.float64)
    y = frame[target].to_numpy(dtype=np.float64)
    return x, y, tuple(features), target


def _check_numeric(series: pd.Series, column: str, path: Path) -> None:
    missing = series.isna()
    if missing.any():
        first = int(np.argmax(missing.to_numpy()))
        raise DataError(
            f"column '{column}' in {path} has {int(missing.sum())} missing value(s), the first "
            f"on line {first + 2}; fill or drop them before tuning."
        )
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna()
    if bad.any():
        first = int(np.argmax(bad.to_numpy()))
        raise DataError(
            f"column '{column}' in {path} is not numeric: line {first + 2} holds "
            f"{series.iloc[first]!r}; encode it as numbers or leave it out of [data] features."
        )
    if not np.isfinite(numeric.to_numpy(dtype=np.float64)).all():
        raise DataError(f"column '{column}' in {path} holds infinite values.")


def _split_sizes(n_rows: int, settings: DataSettings) -> tuple[int, int, int]:
    # train_test_split rounds the test part up and the rest down.
    n_test = math.ceil(settings.test_size * n_rows)
    n_rest = n_rows - n_test
    n_valid = math.ceil(settings.valid_size * n_rest)
    return n_rows - n_test - n_valid, n_valid, n_test


def _check_split_sizes(n_rows: int, settings: DataSettings, origin: str) -> None:
    n_train, n_valid, n_test = _split_sizes(n_rows, settings)
    if n_train >= 2 and n_valid >= 1 and n_test >= 1:
        return
    needed = next(
        (
            n
            for n in range(n_rows + 1, 1_000_000)
            if (sizes := _split_sizes(n, settings))[0] >= 2 and min(sizes[1:]) >= 1
        ),
        None,
    )
    raise DataError(
        f"{origin} has {n_rows} row(s), too few for the split (test_size={settings.test_size}, "
        f"valid_size={settings.valid_size}): it needs at least {needed or 'a million'} to leave "
        f"2 training rows and 1 validation and test row."
    )
