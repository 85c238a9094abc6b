"""Progress for people who wait: a bar on a terminal, plain lines anywhere else.

Logs and CI output stay readable because nothing redraws when stderr is not a terminal.
Only the CLI uses this module.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from tuner.launcher import Progress

__all__ = ["Steps", "TrialProgress"]


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
    def step(self, what: str) -> Iterator[None]:
        """Prints ``what``, runs the block, then prints how long it took."""
        started = time.perf_counter()
        end = "" if _is_terminal(self.stream) else "\n"
        print(f"{what} ...", end=end, file=self.stream, flush=True)
        try:
            yield
        except BaseException:
            print(" failed" if end == "" else f"{what} failed", file=self.stream, flush=True)
            raise
        seconds = time.perf_counter() - started
        done = f" done ({seconds:.1f} s)" if end == "" else f"{what} done ({seconds:.1f} s)"
        print(done, file=self.stream, flush=True)
