"""Plotly figures of tuner's own curves: range tests, LR schedules, learning curves.

Study-level figures (history, importances, parallel coordinates) come from
``optuna.visualization``; see :mod:`tuner.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from tuner.lr_finder import RangeTestResult
from tuner.one_cycle import one_cycle_lr

__all__ = [
    "learning_curves_figure",
    "lr_finder_figure",
    "one_cycle_figure",
    "schedule_comparison_figure",
    "write_html",
]

_RULE_COLORS = {"min_div_10": "#d62728", "steepest": "#2ca02c", "valley": "#9467bd"}


def write_html(figure: go.Figure, path: Path) -> None:
    """Writes a self-contained HTML file: plotly's JavaScript is embedded, not fetched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(str(path), include_plotlyjs=True, full_html=True)


def lr_finder_figure(result: RangeTestResult, suggestions: Mapping[str, float]) -> go.Figure:
    """The range test's loss against LR (log scale), with each rule's suggestion marked."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=result.lrs, y=result.losses, mode="lines", name="batch loss"))
    finite = result.losses[np.isfinite(result.losses)]
    low = float(finite.min()) if len(finite) else 0.0
    for rule, lr in suggestions.items():
        figure.add_vline(
            x=lr,
            line_dash="dash",
            line_color=_RULE_COLORS.get(rule, "gray"),
            annotation_text=f"{rule}: {lr:.2g}",
            annotation_position="top",
        )
    figure.update_layout(
        title="LR range test",
        xaxis={"title": "learning rate", "type": "log"},
        yaxis={"title": "training loss (MSE)", "range": _loss_range(finite, low)},
        showlegend=False,
    )
    return figure


def _loss_range(losses: np.ndarray, low: float) -> list[float] | None:
    if not len(losses):
        return None
    # Like the notebook, cut the axis at the first loss so the explosion does not hide the dip.
    top = float(losses[0]) * 1.2 if losses[0] > low else float(losses.max())
    return [0.0, max(top, low * 1.5)]


def one_cycle_figure(total_steps: int, max_lr: float, points: int = 400) -> go.Figure:
    """The 1-Cycle learning rate over a run."""
    steps = np.unique(np.linspace(0, total_steps - 1, min(points, total_steps)).astype(int))
    lrs = [one_cycle_lr(int(s), total_steps, max_lr) for s in steps]
    figure = go.Figure(go.Scatter(x=steps, y=lrs, mode="lines", name="learning rate"))
    figure.update_layout(
        title=f"1-Cycle schedule (peak {max_lr:.3g}, {total_steps} steps)",
        xaxis={"title": "step"},
        yaxis={"title": "learning rate"},
    )
    return figure


def learning_curves_figure(
    loss: Sequence[float], val_loss: Sequence[float], title: str = "Learning curves"
) -> go.Figure:
    """Training and validation loss per epoch."""
    epochs = list(range(1, len(loss) + 1))
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=epochs, y=list(loss), mode="lines+markers", name="training"))
    figure.add_trace(
        go.Scatter(x=epochs, y=list(val_loss), mode="lines+markers", name="validation")
    )
    figure.update_layout(title=title, xaxis={"title": "epoch"}, yaxis={"title": "MSE"})
    return figure


def schedule_comparison_figure(
    fixed_val_loss: Sequence[float], one_cycle_val_loss: Sequence[float], learning_rate: float
) -> go.Figure:
    """Validation loss per epoch with a fixed LR and with 1-Cycle."""
    figure = go.Figure()
    for name, values in (
        (f"fixed LR {learning_rate:.3g}", fixed_val_loss),
        (f"1-Cycle, peak {learning_rate:.3g}", one_cycle_val_loss),
    ):
        epochs = list(range(1, len(values) + 1))
        figure.add_trace(go.Scatter(x=epochs, y=list(values), mode="lines+markers", name=name))
    figure.update_layout(
        title="Fixed learning rate vs 1-Cycle",
        xaxis={"title": "epoch"},
        yaxis={"title": "validation MSE"},
    )
    return figure
