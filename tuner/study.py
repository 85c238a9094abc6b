"""Creating, resuming and finding studies.

A study records the settings it was created with (search space, direction, sampler,
pruner, training and split settings). Resuming it from a study file that changed any of
them is refused with the list of differences, because the old and new trials would not
belong to one search.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StudyConfig
from tuner.errors import ConfigError, StorageError, TunerError
from tuner.storage import describe_url
from tuner.study_lock import StudyLock

__all__ = [
    "SETTINGS_ATTR",
    "best_trial",
    "load_existing_study",
    "open_study",
    "settings_record",
]

SETTINGS_ATTR = "tuner_settings"
DIRECTION = "minimize"

_logger = logging.getLogger(__name__)


def settings_record(config: StudyConfig) -> dict[str, Any]:
    """The settings a study must keep to stay one search, as JSON-ready values."""
    data = config.data
    return {
        "direction": DIRECTION,
        "sampler": config.study.sampler,
        "pruner": config.study.pruner,
        "space": {name: distribution_to_json(d) for name, d in config.space.items()},
        "train": dataclasses.asdict(config.train),
        "data": {
            "target": data.target,
            "features": list(data.features) if data.features is not None else None,
            "test_size": data.test_size,
            "valid_size": data.valid_size,
            "random_state": data.random_state,
        },
    }


def open_study(
    storage: BaseStorage,
    config: StudyConfig,
    lock: StudyLock,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Creates the study, or resumes it if its settings match ``config``.

    Runs under the study lock, so workers that start together create one study.

    Raises:
        ConfigError: The study exists with other settings; the message lists them.
    """
    name = config.study.name
    created = False
    with lock:
        try:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            created = True
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                direction=optuna.study.StudyDirection.MINIMIZE,
            )
            study.set_user_attr(SETTINGS_ATTR, settings_record(config))
            _logger.info("Created study %r in %s.", name, describe_url(config.study.storage))
    if created:
        # Imported only here: optuna-dashboard takes seconds to import, and a study is
        # created once.
        from tuner.dashboard import save_settings_note

        save_settings_note(study, config)
        return study
    check_resumable(study, config)
    _logger.info("Resuming study %r with %d trials.", name, len(study.get_trials(deepcopy=False)))
    return study


def check_resumable(study: optuna.Study, config: StudyConfig) -> None:
    """Refuses to resume ``study`` with settings other than those it was created with.

    Raises:
        ConfigError: Something differs; the message says what.
    """
    current = settings_record(config)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        stored = {"direction": study.direction.name.lower()}
        _logger.warning(
            "Study %r was not created by tuner; checking its direction only.", study.study_name
        )
    differences = _differences(stored, current)
    if differences:
        raise ConfigError(
            f"{config.path}: study '{study.study_name}' was created with other settings "
            f"({'; '.join(differences)}); resuming would mix two searches, so start a new "
            f"study with --study-name, or restore the old settings."
        )


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    found = []
    for key in ("direction", "sampler", "pruner"):
        if key in stored and stored[key] != current[key]:
            found.append(f"{key} was {stored[key]}, now {current[key]}")
    if "space" in stored:
        old_space, new_space = stored["space"], current["space"]
        for name in sorted(set(old_space) | set(new_space)):
            old, new = old_space.get(name), new_space.get(name)
            if old is None or new is None or json_to_distribution(old) != json_to_distribution(new):
                found.append(f"[space] {name} was {_describe(old)}, now {_describe(new)}")
    for section in ("train", "data"):
        old_table, new_table = stored.get(section, {}), current[section]
        for key in sorted(set(old_table) & set(new_table)):
            if old_table[key] != new_table[key]:
                found.append(f"[{section}] {key} was {old_table[key]!r}, now {new_table[key]!r}")
    return found


def _describe(distribution_json: str | None) -> str:
    if distribution_json is None:
        return "absent"
    d: BaseDistribution = json_to_distribution(distribution_json)
    if isinstance(d, CategoricalDistribution):
        if len(d.choices) == 1:
            return json.dumps(d.choices[0])
        return "one of " + ", ".join(json.dumps(c) for c in d.choices)
    if isinstance(d, FloatDistribution | IntDistribution):
        return f"{d.low}..{d.high}" + (" log" if d.log else "")
    return repr(d)


def load_existing_study(storage: BaseStorage, config: StudyConfig) -> optuna.Study:
    """Loads a study that must exist, for commands that read it.

    Raises:
        StorageError: There is no such study; the message lists the ones there are.
    """
    name = config.study.name
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        )
        there = f"it has: {', '.join(names)}" if names else "it has no studies yet"
        raise StorageError(
            f"no study named '{name}' in {describe_url(config.study.storage)}; {there}."
        ) from None


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The study's best completed trial.

    Raises:
        TunerError: No trial has completed yet.
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TunerError(
            f"study '{study.study_name}' has no completed trial yet; run 'tuner run' first."
        )
    return study.best_trial
