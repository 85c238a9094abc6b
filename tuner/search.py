"""How the search runs: Optuna's samplers and pruners, seeds, and drawing one trial's values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.config import ONE_CYCLE_WARMUP_FRACTION, StudyConfig, TrainSettings

__all__ = [
    "make_pruner",
    "make_sampler",
    "median_warmup_epochs",
    "suggest_params",
    "trial_seed",
    "worker_seed",
]

# The median pruner waits for this many finished trials, and epochs (at a constant LR),
# before judging; under 1-Cycle it waits for the warm-up, see median_warmup_epochs.
MEDIAN_STARTUP_TRIALS = 5
MEDIAN_WARMUP_EPOCHS = 3
HYPERBAND_REDUCTION_FACTOR = 3


def worker_seed(study_seed: int, worker_index: int) -> int:
    """A worker's sampler seed: distinct per worker, reproducible from the study seed.

    ``SeedSequence`` mixes both numbers, so workers 0 and 1 of seed 42 do not get seeds
    42 and 43, whose streams would be unrelated only by luck.
    """
    return int(np.random.SeedSequence([study_seed, worker_index]).generate_state(1)[0])


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial's weight initialization and shuffling."""
    return int(np.random.SeedSequence([study_seed, 1_000_003, trial_number]).generate_state(1)[0])


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Returns the study's sampler, seeded for one worker."""
    if config.study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Returns the study's pruner; epochs are its steps."""
    if config.study.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS,
            n_warmup_steps=median_warmup_epochs(config.train),
        )
    if config.study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=config.train.epochs,
            reduction_factor=HYPERBAND_REDUCTION_FACTOR,
        )
    return optuna.pruners.NopPruner()


def median_warmup_epochs(train: TrainSettings) -> int:
    """The epochs the median pruner lets a trial train before it judges it.

    Under 1-Cycle, the warm-up: while the LR still climbs, the trials with the high peaks
    that train best look worst, and replayed over unpruned runs of the default study a
    3-epoch wait pruned the best trial of one seed in four (``benchmarks/pruning.py``).
    """
    if train.schedule == "one_cycle":
        warmup = math.ceil(ONE_CYCLE_WARMUP_FRACTION * train.epochs)
    else:
        warmup = MEDIAN_WARMUP_EPOCHS
    return min(warmup, train.epochs - 1)


def suggest_params(trial: optuna.Trial, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """Draws a value for every parameter of ``space``; fixed values are one-choice categoricals."""
    params: dict[str, Any] = {}
    for name, distribution in space.items():
        if isinstance(distribution, FloatDistribution):
            params[name] = trial.suggest_float(
                name,
                distribution.low,
                distribution.high,
                log=distribution.log,
                step=distribution.step,
            )
        elif isinstance(distribution, IntDistribution):
            params[name] = trial.suggest_int(
                name,
                distribution.low,
                distribution.high,
                log=distribution.log,
                step=distribution.step,
            )
        elif isinstance(distribution, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, distribution.choices)
        else:
            raise TypeError(f"unsupported distribution for {name}: {distribution!r}")
    return params
