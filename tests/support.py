"""Helpers for tests that run the real CLI on real files: study files, CSV data, subprocesses."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import tomli_w
from optuna.trial import FrozenTrial

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """A small regression problem: y is a noisy nonlinear function of four features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y = 2.0 * x[:, 0] - x[:, 1] + np.sin(x[:, 2]) + 0.1 * rng.normal(size=rows)
    lines = ["a,b,c,d,target"] + [
        ",".join(f"{v:.6f}" for v in (*features, target))
        for features, target in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_study(path: Path, **sections: dict[str, Any]) -> Path:
    """Writes a study file from one dict per section."""
    path.write_text(tomli_w.dumps(sections))
    return path


def tiny_study(
    folder: Path,
    name: str = "tiny",
    n_trials: int = 6,
    epochs: int = 2,
    study: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """A study on a small CSV that trains in well under a second per trial.

    Returns:
        The study file and its storage URL.
    """
    data = write_csv(folder / "data.csv")
    url = f"sqlite:///{folder / (name + '.db')}"
    path = write_study(
        folder / f"{name}.toml",
        study={
            "name": name,
            "n_trials": n_trials,
            "storage": url,
            "pruner": "none",
            # In the folder even when a test points the storage at a server (whose default
            # artifact folder is relative to the working directory, i.e. the repository).
            "artifact_dir": str(folder / f"{name}_artifacts"),
            **(study or {}),
        },
        data={"source": str(data), "target": "target"},
        train={"epochs": epochs, **(train or {})},
        space=space
        or {
            "learning_rate": {"low": 1e-3, "high": 1e-1, "log": True},
            "n_hidden": {"low": 1, "high": 2},
            "n_neurons": {"low": 4, "high": 16},
            "batch_size": 64,
            "activation": {"choices": ["relu", "tanh", "elu"]},
        },
    )
    return path, url


def tuner_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner", *args]


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Runs the real CLI in a subprocess and returns what it printed."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        tuner_command(*args),
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    """The study's trials, read with plain Optuna."""
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
