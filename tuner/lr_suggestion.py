"""Rules that turn an LR range test's curve into one learning rate: plain functions of numbers.

Three rules, each tested on synthetic curves:

- ``min_div_10``, the reference notebook's: the LR at the lowest loss, divided by 10.
- ``steepest``: where the smoothed loss falls fastest against log LR (fastai's "steep",
  Lightning's suggestion).
- ``valley``: fastai's valley: the longest run of falling loss, and a point halfway along
  it, which is more stable from run to run than either of the others.

The smoothed rules use a bias-corrected exponential moving average of the loss (fastai's
``Recorder``), so that one noisy batch does not decide the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["RULES", "smooth_losses", "suggest_lr", "suggestion_spread"]

DEFAULT_SKIP_START = 10
DEFAULT_SKIP_END = 5
DEFAULT_BETA = 0.98


def smooth_losses(losses: ArrayLike, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Returns the bias-corrected exponential moving average of ``losses``.

    Args:
        losses: The raw losses, in sweep order.
        beta: The weight of the past. Defaults to 0.98.

    Raises:
        ValueError: ``beta`` is not in [0, 1).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), but got {beta=}.")
    values = np.asarray(losses, dtype=np.float64)
    smoothed = np.empty(len(values))
    average = 0.0
    for i, loss in enumerate(values):
        average = beta * average + (1.0 - beta) * float(loss)
        smoothed[i] = average / (1.0 - beta ** (i + 1))
    return smoothed


def _min_div_10(log_lrs: np.ndarray, losses: np.ndarray) -> int:
    return int(np.argmin(losses))


def _steepest(log_lrs: np.ndarray, smoothed: np.ndarray) -> int:
    return int(np.argmin(np.gradient(smoothed, log_lrs)))


def _valley(log_lrs: np.ndarray, smoothed: np.ndarray) -> int:
    # fastai's valley: the longest decreasing subsequence of the smoothed loss, then a point
    # halfway into it (a third plus a sixth). Quadratic, which is fine for a few hundred points.
    n = len(smoothed)
    run = [1] * n
    best_start, best_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[best_end] < run[i]:
            best_end = i
            best_start = best_end - run[best_end]
    third = (best_end - best_start) / 3
    return min(n - 1, max(0, best_start + int(third) + int(third / 2)))


_INDEX_RULES: Mapping[str, Callable[[np.ndarray, np.ndarray], int]] = {
    "min_div_10": _min_div_10,
    "steepest": _steepest,
    "valley": _valley,
}
RULES: tuple[str, ...] = tuple(_INDEX_RULES)
_SMOOTHED_RULES = ("steepest", "valley")


def suggest_lr(
    lrs: ArrayLike,
    losses: ArrayLike,
    rule: str = "min_div_10",
    *,
    skip_start: int = DEFAULT_SKIP_START,
    skip_end: int = DEFAULT_SKIP_END,
) -> float:
    """Suggests a learning rate from a range test's curve.

    Args:
        lrs: The learning rates of the sweep, increasing.
        losses: The loss at each of those learning rates.
        rule: ``min_div_10``, ``steepest`` or ``valley``. Defaults to ``min_div_10``.
        skip_start: Points dropped at the start, where the loss is still settling.
            Defaults to 10.
        skip_end: Points dropped at the end, where the loss explodes. Defaults to 5.

    Returns:
        The suggested learning rate.

    Raises:
        ValueError: The inputs differ in length, are too short for the skips, hold no finite
            loss, or the rule is unknown.
    """
    if rule not in _INDEX_RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, but got {rule=}.")
    lr_array = np.asarray(lrs, dtype=np.float64)
    loss_array = np.asarray(losses, dtype=np.float64)
    if lr_array.shape != loss_array.shape or lr_array.ndim != 1:
        raise ValueError(
            f"lrs and losses must be 1-D and of the same length, but got shapes "
            f"{lr_array.shape} and {loss_array.shape}."
        )
    if skip_start < 0 or skip_end < 0:
        raise ValueError(f"skips must be >= 0, but got {skip_start=}, {skip_end=}.")
    finite = np.isfinite(loss_array) & np.isfinite(lr_array) & (lr_array > 0)
    # The sweep stops at the first non-finite loss, so the finite points are a prefix.
    n_finite = int(np.argmin(finite)) if not finite.all() else len(finite)
    # Clamped: a negative stop would count from the end and bring the non-finite tail back.
    window = slice(skip_start, max(0, n_finite - skip_end))
    lr_window = lr_array[window]
    if len(lr_window) < 2:
        raise ValueError(
            f"the range test has {n_finite} finite points, too few to drop {skip_start} at the "
            f"start and {skip_end} at the end; sweep more steps or lower the skips."
        )
    curve = loss_array[:n_finite]
    if rule in _SMOOTHED_RULES:
        # Over the whole curve, then windowed: started at the window, the average would
        # still be settling there, and its first steps would look like the steepest descent.
        curve = smooth_losses(curve)
    index = _INDEX_RULES[rule](np.log10(lr_window), curve[window])
    lr = float(lr_window[index])
    return lr / 10.0 if rule == "min_div_10" else lr


def suggestion_spread(suggestions: Mapping[str, float]) -> float:
    """Returns how far apart the suggestions land, in decades (powers of ten)."""
    logs = [math.log10(lr) for lr in suggestions.values()]
    return max(logs) - min(logs) if logs else 0.0
