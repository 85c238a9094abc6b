"""A trial's curves, stored with Optuna's artifact API for optuna-dashboard to show.

When a trial has trained, or was pruned or diverged after an epoch or more, its worker stores
three curves as files in the study's artifact folder (``[study] artifact_dir``, by default
beside the SQLite database):

- ``learning_curves``: training and validation MSE per epoch (the CSV adds the validation
  MAE and the learning rate at the end of each epoch);
- ``lr_schedule``: the learning rate per step as the schedule laid it out, and where early
  stopping, pruning or divergence ended the run;
- ``lr_range_test``: the range test's loss against the LR, with the suggestion, when
  ``[train] lr_finder`` is on.

Each is an SVG, which the dashboard shows inline in the trial's artifact cards, and a CSV,
which it shows as a table and ``tuner report`` reads back. Together they are a few kilobytes,
written in about a millisecond; their metadata (a system attribute per file) is committed with
the trial's other attributes in the worker's final transaction. A PNG would need kaleido and a
browser, seconds per trial; a plotly HTML page is 3.5 MB.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from tuner.config import StudyConfig, TrainSettings
from tuner.figures import loss_axis_range
from tuner.svg_chart import Marker, Series, line_chart

if TYPE_CHECKING:
    from tuner.recipe import TrainedModel

__all__ = [
    "LEARNING_CURVES",
    "LR_SCHEDULE",
    "RANGE_TEST",
    "TrialArtifacts",
    "artifact_store",
    "read_trial_table",
    "trial_files",
]

LEARNING_CURVES = "learning_curves"
LR_SCHEDULE = "lr_schedule"
RANGE_TEST = "lr_range_test"

SCHEDULE_POINTS = 100

# Optuna's key prefix for artifact metadata in system attributes (optuna.artifacts._upload).
_ATTR_PREFIX = "artifacts:"
_MIMETYPES = {".csv": "text/csv", ".svg": "image/svg+xml"}

_logger = logging.getLogger(__name__)


def artifact_store(config: StudyConfig) -> FileSystemArtifactStore:
    """The study's artifact store, on ``config.artifact_dir`` (not created here)."""
    return FileSystemArtifactStore(config.artifact_dir)


class TrialArtifacts:
    """Stores a trained trial's curves; the objective's ``after_training`` hook.

    A file that cannot be written is logged and skipped: the trial trained fine, so it is not
    failed for want of a picture.

    Args:
        config: The study configuration: where artifacts go and how trials train.
    """

    def __init__(self, config: StudyConfig) -> None:
        self.folder = config.artifact_dir
        self._settings = config.train
        self._store: FileSystemArtifactStore | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._store = FileSystemArtifactStore(self.folder)
        except OSError as e:
            _logger.warning("Trial curves will not be stored: cannot create %s: %s", self.folder, e)
        # upload_artifact copies from a file whose name becomes the artifact's name; that file
        # goes to memory (/dev/shm) where there is such a file system: on disk, writing and
        # removing it would cost more than the artifact itself.
        self._scratch = tempfile.TemporaryDirectory(prefix="tuner-artifacts-", dir=_memory_dir())

    def __call__(self, trial: optuna.Trial, trained: TrainedModel) -> None:
        if self._store is None:
            return
        try:
            for name, text in trial_files(trained, self._settings).items():
                path = Path(self._scratch.name) / name
                path.write_text(text, encoding="utf-8")
                try:
                    upload_artifact(
                        artifact_store=self._store,
                        file_path=str(path),
                        study_or_trial=trial,
                        mimetype=_MIMETYPES[path.suffix],
                    )
                finally:
                    # Rewriting a file in place next trial would cost a disk flush on ext4.
                    path.unlink()
        except OSError as e:
            _logger.warning(
                "Could not store trial %d's curves in %s: %s", trial.number, self.folder, e
            )


def _memory_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def trial_files(trained: TrainedModel, settings: TrainSettings) -> dict[str, str]:
    """The artifact files of a trained trial, by file name.

    Args:
        trained: The trained model and its record.
        settings: The ``[train]`` settings it was trained with.

    Returns:
        File contents (SVG and CSV text) by file name.
    """
    history = trained.history
    epochs = list(range(1, history.epochs + 1))
    files = {
        f"{LEARNING_CURVES}.svg": line_chart(
            [
                Series("training", epochs, history.loss),
                Series("validation", epochs, history.val_loss),
            ],
            title="Learning curves",
            x_label="epoch",
            y_label="MSE",
        ),
        f"{LEARNING_CURVES}.csv": _csv(
            {
                "epoch": epochs,
                "train_mse": history.loss,
                "val_mse": history.val_loss,
                "val_mae": history.val_mae,
                "lr": history.lr,
            }
        ),
    }
    steps, lrs = _schedule(trained, settings)
    steps_per_epoch = trained.total_steps // settings.epochs
    stopped = history.epochs * steps_per_epoch if history.epochs < settings.epochs else None
    files[f"{LR_SCHEDULE}.svg"] = line_chart(
        [Series("learning rate", steps, lrs)],
        title=f"1-Cycle schedule, peak {trained.learning_rate:.3g}"
        if settings.schedule == "one_cycle"
        else f"Constant learning rate {trained.learning_rate:.3g}",
        x_label="step",
        y_label="learning rate",
        markers=[Marker(stopped, "stopped" if trained.aborted else "early stop", "#555")]
        if stopped is not None
        else (),
    )
    files[f"{LR_SCHEDULE}.csv"] = _csv({"step": steps, "lr": lrs})
    result = trained.range_test
    if result is not None:
        markers = []
        if trained.lr_suggestion is not None:
            suggested = trained.lr_suggestion
            markers.append(Marker(suggested, f"{settings.lr_suggestion}: {suggested:.2g}"))
            if not math.isclose(trained.learning_rate, suggested):
                used = trained.learning_rate
                markers.append(Marker(used, f"used: {used:.2g}", "#2ca02c"))
        files[f"{RANGE_TEST}.svg"] = line_chart(
            [Series("batch loss", result.lrs, result.losses)],
            title="LR range test",
            x_label="learning rate",
            y_label="training loss (MSE)",
            log_x=True,
            y_range=loss_axis_range(result.losses),
            markers=markers,
        )
        files[f"{RANGE_TEST}.csv"] = _csv({"lr": result.lrs, "loss": result.losses})
    return files


def _schedule(trained: TrainedModel, settings: TrainSettings) -> tuple[list[int], list[float]]:
    total = trained.total_steps
    if settings.schedule != "one_cycle":
        return [0, total - 1], [trained.learning_rate] * 2
    # Imported here: tuner.one_cycle loads Keras, which readers of this module do not need.
    from tuner.one_cycle import one_cycle_lr

    steps = sorted({round(i * (total - 1) / (SCHEDULE_POINTS - 1)) for i in range(SCHEDULE_POINTS)})
    return steps, [one_cycle_lr(s, total, trained.learning_rate) for s in steps]


def _csv(columns: Mapping[str, Sequence[float] | np.ndarray]) -> str:
    names = list(columns)
    cells = [_cells(columns[n]) for n in names]
    return "\n".join([",".join(names), *(",".join(row) for row in zip(*cells, strict=True))]) + "\n"


def _cells(values: Sequence[float] | np.ndarray) -> list[str]:
    listed = np.asarray(values).tolist()  # Python numbers format several times faster.
    if all(isinstance(v, int) for v in listed):
        return [str(v) for v in listed]
    return [f"{v:.7g}" for v in listed]


def read_trial_table(
    store: FileSystemArtifactStore, trial: FrozenTrial, name: str
) -> dict[str, list[float]] | None:
    """Reads back one of a trial's CSV artifacts, e.g. ``lr_schedule``, as columns.

    Args:
        store: The study's artifact store.
        trial: The trial, with its system attributes.
        name: The artifact's name without ``.csv``.

    Returns:
        The columns by name, or None if the trial has no such artifact or its file is gone.
    """
    filename = f"{name}.csv"
    for key, value in trial.system_attrs.items():
        meta = json.loads(value) if key.startswith(_ATTR_PREFIX) else None
        if not meta or meta.get("filename") != filename:
            continue  # The dashboard records a deleted artifact as null.
        try:
            with store.open_reader(meta["artifact_id"]) as reader:
                text = reader.read().decode("utf-8")
        except (OSError, ArtifactNotFound):
            _logger.debug("Trial %d's %s is listed but not readable.", trial.number, filename)
            return None
        header, *rows = text.strip().splitlines()
        names = header.split(",")
        values = [[float(v) for v in row.split(",")] for row in rows]
        return {n: [row[i] for row in values] for i, n in enumerate(names)}
    return None
