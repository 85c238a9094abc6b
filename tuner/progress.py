"""Progress for people who wait: a bar on a terminal, plain lines anywhere else.

Logs and CI output stay readable because nothing redraws when stderr is not a terminal.
Only the CLI uses this module.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from tuner.launcher import Progress

if TYPE_CHECKING:
    import keras

__all__ = ["EpochProgress", "Steps", "TrialProgress", "epoch_callback"]


def _is_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


class TrialProgress:
    """Shows ``tuner run``'s progress: finished trials of the budget, and the best value.

    Args:
        stream: Where to write. Defaults to stderr.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar: tqdm | None = None
        self._last_line = ""

    def update(self, progress: Progress) -> None:
        """Shows a new snapshot."""
        best = (
            f"best {progress.best_value:.4f} (trial {progress.best_number})"
            if progress.best_value is not None
            else "no completed trial yet"
        )
        if _is_terminal(self.stream):
            if self._bar is None:
                self._bar = tqdm(
                    total=progress.budget,
                    file=self.stream,
                    unit="trial",
                    dynamic_ncols=True,
                    desc="trials",
                )
            self._bar.n = progress.finished
            self._bar.set_postfix_str(f"{best}, {progress.running} running", refresh=True)
            return
        first = progress.finished - len(progress.new) + 1
        for position, trial in enumerate(progress.new, start=first):
            value = f" value {trial.value:.4f}" if trial.value is not None else ""
            self._print(
                f"[{position}/{progress.budget}] trial {trial.number} "
                f"{trial.state.name}{value}; {best}"
            )

    def close(self) -> None:
        """Ends the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _print(self, line: str) -> None:
        if line != self._last_line:
            print(line, file=self.stream, flush=True)
            self._last_line = line


class Steps:
    """Announces the steps of a long command (``train-best``, ``compare``, ``report``).

    On a terminal each step shows a spinner-free "... done (3.1 s)" line; elsewhere the same
    plain lines, so logs read the same.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    @contextmanager
    def step(self, what: str, shows_progress: bool = False) -> Iterator[None]:
        """Prints ``what``, runs the block, then prints how long it took.

        Args:
            what: The step, e.g. "Loading data".
            shows_progress: The block prints progress of its own (e.g. :class:`EpochProgress`),
                so the step's line ends before it, even on a terminal.
        """
        started = time.perf_counter()
        end = "" if _is_terminal(self.stream) and not shows_progress else "\n"
        print(f"{what} ...", end=end, file=self.stream, flush=True)
        try:
            yield
        except BaseException:
            print(" failed" if end == "" else f"{what} failed", file=self.stream, flush=True)
            raise
        seconds = time.perf_counter() - started
        done = f" done ({seconds:.1f} s)" if end == "" else f"{what} done ({seconds:.1f} s)"
        print(done, file=self.stream, flush=True)


class EpochProgress:
    """Shows training progress per epoch: a bar on a terminal, a line per epoch elsewhere.

    Args:
        epochs: The most epochs a run trains (early stopping may end it sooner).
        runs: How many runs train one after the other, e.g. 2 for ``tuner compare``.
        stream: Where to write. Defaults to stderr.
    """

    def __init__(self, epochs: int, runs: int = 1, stream: TextIO | None = None) -> None:
        self.epochs = epochs
        self.runs = runs
        self.stream = stream or sys.stderr
        self.run = 0
        self._bar: tqdm | None = None
        self._epoch = 0

    def start_run(self) -> None:
        """A run starts training."""
        self.run += 1
        self._epoch = 0
        if _is_terminal(self.stream):
            self._bar = tqdm(
                total=self.epochs,
                file=self.stream,
                unit="epoch",
                dynamic_ncols=True,
                desc=self._prefix() or "epochs",
                leave=True,
            )

    def epoch_done(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Epoch ``epoch`` (0-based) finished with these metrics."""
        self._epoch = epoch + 1
        metrics = _metrics(logs)
        if self._bar is not None:
            self._bar.update(self._epoch - self._bar.n)
            self._bar.set_postfix_str(metrics, refresh=True)
            return
        prefix = f"{self._prefix()} " if self._prefix() else ""
        print(f"{prefix}epoch {self._epoch}/{self.epochs}: {metrics}", file=self.stream, flush=True)

    def end_run(self) -> None:
        """The run stopped, at the last epoch or early."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if 0 < self._epoch < self.epochs:
            print(
                f"{self._prefix() + ' ' if self._prefix() else ''}stopped early after "
                f"{self._epoch} epochs (no better validation MSE for a while).",
                file=self.stream,
                flush=True,
            )

    def _prefix(self) -> str:
        return f"run {self.run}/{self.runs}" if self.runs > 1 else ""


def _metrics(logs: Mapping[str, Any]) -> str:
    shown = []
    for key, label, spec in (
        ("loss", "train MSE", ".4f"),
        ("val_loss", "val MSE", ".4f"),
        ("learning_rate", "LR", ".3g"),
    ):
        value = logs.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            shown.append(f"{label} {value:{spec}}")
    return ", ".join(shown)


def epoch_callback(progress: EpochProgress) -> keras.callbacks.Callback:
    """A Keras callback that feeds ``progress``; for ``train_params``'s ``callbacks``.

    Keras is imported here, not with this module, so ``tuner run`` does not load it.
    """
    import keras

    class _EpochCallback(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            progress.start_run()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            progress.epoch_done(epoch, logs or {})

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            progress.end_run()

    return _EpochCallback()
