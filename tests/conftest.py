"""Fixtures shared by the unit tests: seeded randomness, tiny data, CSV files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.postgres import postgres_db, postgres_server, private_postgres  # noqa: F401

N_ROWS = 64
N_FEATURES = 8


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed."""
    return np.random.default_rng(42)


@pytest.fixture
def tiny_regression(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """64 rows of 8 standard-normal float32 features and a noisy linear float32 target."""
    x = rng.normal(size=(N_ROWS, N_FEATURES)).astype(np.float32)
    weights = rng.normal(size=N_FEATURES)
    y = (x @ weights + 0.1 * rng.normal(size=N_ROWS)).astype(np.float32)
    return x, y


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """Writes rows under a header to a CSV file in ``tmp_path`` and returns its path."""

    def write(
        header: Sequence[str], rows: Sequence[Sequence[object]], name: str = "data.csv"
    ) -> Path:
        path = tmp_path / name
        lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write
