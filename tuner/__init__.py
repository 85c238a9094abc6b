"""tuner: hyperparameter tuning for Keras regression models, on Optuna.

The public API loads lazily, so that ``tuner --help`` and study-file errors do not wait for
TensorFlow to import.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# TensorFlow's C++ start-up chatter is noise for tuner's users; set before it loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = [
    "ConfigError",
    "DataError",
    "Dataset",
    "LRFinder",
    "Objective",
    "OneCycleSchedule",
    "OneCycleScheduler",
    "RangeTestResult",
    "StorageError",
    "StudyConfig",
    "TrainingDivergedError",
    "TrainingHistory",
    "TunerError",
    "build_model",
    "fit",
    "load_dataset",
    "load_study_config",
    "one_cycle_lr",
    "one_cycle_momentum",
    "range_test",
    "suggest_lr",
]

_LOCATIONS = {
    "ConfigError": "tuner.errors",
    "DataError": "tuner.errors",
    "StorageError": "tuner.errors",
    "TunerError": "tuner.errors",
    "StudyConfig": "tuner.config",
    "load_study_config": "tuner.config",
    "Dataset": "tuner.data",
    "load_dataset": "tuner.data",
    "build_model": "tuner.model",
    "OneCycleSchedule": "tuner.one_cycle",
    "OneCycleScheduler": "tuner.one_cycle",
    "one_cycle_lr": "tuner.one_cycle",
    "one_cycle_momentum": "tuner.one_cycle",
    "LRFinder": "tuner.lr_finder",
    "RangeTestResult": "tuner.lr_finder",
    "range_test": "tuner.lr_finder",
    "suggest_lr": "tuner.lr_suggestion",
    "TrainingDivergedError": "tuner.training",
    "TrainingHistory": "tuner.training",
    "fit": "tuner.training",
    "Objective": "tuner.objective",
}

if TYPE_CHECKING:
    from tuner.config import StudyConfig, load_study_config
    from tuner.data import Dataset, load_dataset
    from tuner.errors import ConfigError, DataError, StorageError, TunerError
    from tuner.lr_finder import LRFinder, RangeTestResult, range_test
    from tuner.lr_suggestion import suggest_lr
    from tuner.model import build_model
    from tuner.objective import Objective
    from tuner.one_cycle import (
        OneCycleSchedule,
        OneCycleScheduler,
        one_cycle_lr,
        one_cycle_momentum,
    )
    from tuner.training import TrainingDivergedError, TrainingHistory, fit


def __getattr__(name: str) -> Any:
    if name not in _LOCATIONS:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    return getattr(importlib.import_module(_LOCATIONS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
