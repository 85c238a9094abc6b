"""The Optuna objective: draw hyperparameters, train them, report every epoch, score.

The score is the best validation MSE; the test split is never touched while tuning. Every
epoch's validation MSE goes to Optuna (``TFKerasPruningCallback``), so a pruner can stop a
poor trial early. A trial that raises is failed by Optuna with the error kept in its
``error`` attribute; the worker moves on to the next trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import keras
import optuna
from optuna_integration import TFKerasPruningCallback

from tuner import interrupts
from tuner.config import StudyConfig
from tuner.data import Dataset, load_dataset
from tuner.recipe import TrainedModel, train_params
from tuner.search import suggest_params, trial_seed

__all__ = ["Objective"]

_logger = logging.getLogger(__name__)

_MAX_ERROR_LENGTH = 2000

TrialHook = Callable[[optuna.Trial, TrainedModel], None]


class Objective:
    """Trains one trial's hyperparameters and returns its best validation MSE.

    Args:
        config: The study configuration.
        dataset: The data; loaded from ``config.data`` when not given.
        after_training: Called with the trial and its trained model before the trial
            finishes, e.g. to store artifacts; for a pruned or diverged trial, with the
            epochs it trained. Defaults to nothing.
    """

    def __init__(
        self,
        config: StudyConfig,
        dataset: Dataset | None = None,
        after_training: TrialHook | None = None,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.after_training = after_training

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            interrupts.raise_if_stopping()
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt as e:
            trial.set_user_attr("interrupted", str(e) or "SIGINT")
            raise
        except Exception as e:
            if interrupts.stopping():
                # The interrupt, turned into another error by TensorFlow's tracing: the
                # trial was stopped, not broken, so it is queued again like any stopped one.
                name = interrupts.received_signal_name()
                trial.set_user_attr("interrupted", name)
                raise KeyboardInterrupt(name) from e
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:_MAX_ERROR_LENGTH])
            raise

    def _run(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        params = suggest_params(trial, self.config.space)
        data = self.dataset if self.dataset is not None else load_dataset(self.config.data)
        seed = trial_seed(self.config.study.seed, trial.number)
        trained = train_params(
            params,
            data,
            self.config.train,
            seed=seed,
            callbacks=[TFKerasPruningCallback(trial, "val_loss"), _StopWhenSignalled()],
            on_abort=lambda partial: self._after_abort(trial, partial),
        )
        history = trained.history
        trial.set_user_attr("val_mae", history.best_val_mae)
        trial.set_user_attr("epochs_trained", history.epochs)
        trial.set_user_attr("train_seconds", round(time.perf_counter() - started, 3))
        if trained.range_test is not None and trained.lr_suggestion is not None:
            trial.set_user_attr("lr_suggestion", trained.lr_suggestion)
            trial.set_user_attr("lr_factor", params.get("lr_factor", 1.0))
            trial.set_user_attr("lr_used", trained.learning_rate)
            # Every rule's answer on this trial's curve, and how far apart they land.
            suggestions = trained.range_test.suggestions()
            trial.set_user_attr("lr_suggestions", suggestions)
            trial.set_user_attr("lr_spread_decades", trained.range_test.spread(suggestions))
        if self.after_training is not None:
            self.after_training(trial, trained)
        return history.best_val_loss

    def _after_abort(self, trial: optuna.Trial, partial: TrainedModel) -> None:
        # A pruned or diverged trial's curves up to where it stopped are worth keeping too;
        # but never in place of the reason it stopped.
        if self.after_training is None or not partial.history.epochs:
            return
        try:
            self.after_training(trial, partial)
        except Exception:
            _logger.warning("Could not store trial %d's curves.", trial.number, exc_info=True)


class _StopWhenSignalled(keras.callbacks.Callback):
    """Ends training at the next epoch once a stop signal arrived, if its interrupt was lost."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        interrupts.raise_if_stopping()
