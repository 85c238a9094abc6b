"""Plotly figures of tuner's own curves: range tests, LR schedules, learning curves, trials.

Study-level figures (history, importances, parallel coordinates) come from
``optuna.visualization``; see :mod:`tuner.report`. This module does not import Keras, so
``tuner report`` starts in a second; :func:`one_cycle_figure` loads it when called.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from numpy.typing import ArrayLike
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from tuner.lr_finder import RangeTestResult

__all__ = [
    "final_model_figure",
    "learning_curves_figure",
    "loss_axis_range",
    "lr_finder_figure",
    "lr_schedule_figure",
    "one_cycle_figure",
    "range_test_figure",
    "schedule_comparison_figure",
    "trial_results_figure",
    "write_html",
]

_BAR_COLOR = "#9ecae1"
_BEST_COLOR = "#d62728"

_LABEL_ROW_PIXELS = 16
_RULE_COLORS = {"min_div_10": "#d62728", "steepest": "#2ca02c", "valley": "#9467bd"}


def write_html(figure: go.Figure, path: Path) -> None:
    """Writes a self-contained HTML file: plotly's JavaScript is embedded, not fetched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(str(path), include_plotlyjs=True, full_html=True)


def lr_finder_figure(result: RangeTestResult, suggestions: Mapping[str, float]) -> go.Figure:
    """The range test's loss against LR (log scale), with each rule's suggestion marked."""
    return range_test_figure(result.lrs, result.losses, suggestions)


def range_test_figure(
    lrs: ArrayLike, losses: ArrayLike, suggestions: Mapping[str, float], title: str = ""
) -> go.Figure:
    """Loss against LR (log scale) from a range test, with each suggestion marked.

    Args:
        lrs: The learning rate of each step.
        losses: The loss of each step.
        suggestions: LRs to mark, by the name of the rule (or choice) that gave them.
        title: Defaults to "LR range test".
    """
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=lrs, y=losses, mode="lines", name="batch loss"))
    for row, (rule, lr) in enumerate(suggestions.items()):
        color = _RULE_COLORS.get(rule, "gray")
        figure.add_vline(x=lr, line_dash="dash", line_color=color)
        # Not the line's own annotation: on a log axis an annotation's x is in decades while
        # a line's is not, so plotly puts it elsewhere (plotly.py #2580).
        figure.add_annotation(
            x=math.log10(lr),
            xref="x",
            y=1.0,
            yref="paper",
            yanchor="bottom",
            # A row of its own for each label, above the plot: rules often land close.
            yshift=_LABEL_ROW_PIXELS * row,
            text=f"{rule}: {lr:.2g}",
            font={"color": color},
            showarrow=False,
        )
    axis_range = loss_axis_range(losses)
    figure.update_layout(
        title=title or "LR range test",
        xaxis={"title": "learning rate", "type": "log"},
        yaxis={
            "title": "training loss (MSE)",
            "range": list(axis_range) if axis_range is not None else None,
        },
        showlegend=False,
    )
    return figure


def loss_axis_range(losses: ArrayLike) -> tuple[float, float] | None:
    """A loss axis for a range test: from 0 to a little above the first loss.

    Like the notebook, the axis is cut so the explosion at high LRs does not hide the dip.
    None when no loss is finite.
    """
    values = np.asarray(losses, np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    low = float(finite.min())
    top = float(finite[0]) * 1.2 if finite[0] > low else float(finite.max())
    return 0.0, max(top, low * 1.5)


def one_cycle_figure(total_steps: int, max_lr: float, points: int = 400) -> go.Figure:
    """The 1-Cycle learning rate over a run. Imports Keras (through :mod:`tuner.one_cycle`)."""
    from tuner.one_cycle import one_cycle_lr

    steps = np.unique(np.linspace(0, total_steps - 1, min(points, total_steps)).astype(int))
    lrs = [one_cycle_lr(int(s), total_steps, max_lr) for s in steps]
    return lr_schedule_figure(
        steps, lrs, title=f"1-Cycle schedule (peak {max_lr:.3g}, {total_steps} steps)"
    )


def lr_schedule_figure(
    steps: ArrayLike,
    lrs: ArrayLike,
    *,
    stopped_at: float | None = None,
    title: str = "Learning-rate schedule",
) -> go.Figure:
    """A learning rate per step, e.g. a trial's recorded schedule.

    Args:
        steps: Training steps (batches).
        lrs: The learning rate at each of them.
        stopped_at: The step at which early stopping ended the run, marked if given.
        title: The figure's title.
    """
    figure = go.Figure(
        go.Scatter(x=np.asarray(steps), y=np.asarray(lrs), mode="lines", name="learning rate")
    )
    if stopped_at is not None:
        figure.add_vline(
            x=stopped_at,
            line_dash="dash",
            line_color="gray",
            annotation_text="early stop",
            annotation_position="top",
        )
    figure.update_layout(title=title, xaxis={"title": "step"}, yaxis={"title": "learning rate"})
    return figure


def trial_results_figure(trials: Sequence[FrozenTrial]) -> go.Figure:
    """The reference notebook's bar chart: each completed trial's validation MSE, best in red.

    Args:
        trials: The study's trials; only completed ones with a value are drawn.
    """
    scored = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = min(scored, key=lambda t: t.value or 0.0) if scored else None
    figure = go.Figure(
        go.Bar(
            x=[t.number for t in scored],
            y=[t.value for t in scored],
            marker_color=[_BEST_COLOR if t is best else _BAR_COLOR for t in scored],
            hovertext=[_describe_params(t.params) for t in scored],
            name="validation MSE",
        )
    )
    title = "Validation MSE of each trial"
    if best is not None:
        title += f" (best: trial {best.number}, {best.value:.4f})"
    figure.update_layout(
        title=title,
        xaxis={"title": "trial", "type": "category"},
        yaxis={"title": "validation MSE"},
        showlegend=False,
    )
    return figure


def _describe_params(params: Mapping[str, Any]) -> str:
    return "<br>".join(
        f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in params.items()
    )


def final_model_figure(final: Mapping[str, Any]) -> go.Figure:
    """The final model's scores as a table (``tuner train-best``'s record)."""
    rows = [
        ("test MSE", f"{final['test_mse']:.4f}"),
        ("test MAE", f"{final['test_mae']:.4f}"),
        ("validation MSE", f"{final['val_mse']:.4f}"),
        ("trained from trial", str(final["trial_number"])),
        ("epochs", str(final["epochs"])),
        ("saved to", str(final["path"])),
    ]
    figure = go.Figure(
        go.Table(
            header={"values": ["final model", ""], "align": "left"},
            cells={"values": [[r[0] for r in rows], [r[1] for r in rows]], "align": "left"},
        )
    )
    figure.update_layout(title="Final model (tuner train-best)", height=320)
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
