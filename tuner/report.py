"""``tuner report``: a study's figures in one HTML file that opens offline.

The report holds the optimization history, each trial's validation MSE (the reference
notebook's bar chart), parameter importances, parallel coordinates, the LR range test, the
best trial's learning-rate schedule, fixed LR against 1-Cycle (after ``tuner compare``) and
the final model's test scores (after ``tuner train-best``). Plotly's JavaScript is embedded
once, so the file needs no network.

It reads the study as it is, so it works while workers run and with a handful of trials: a
figure that needs more than there is says what it is waiting for instead. tuner's own
figures are also saved in the study (``optuna_dashboard.save_plotly_graph_object``), where
the dashboard shows them on the study's page; the dashboard draws the history, importances
and parallel coordinates itself.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from optuna.trial import FrozenTrial, TrialState

from tuner import figures
from tuner.artifacts import LR_SCHEDULE, RANGE_TEST, artifact_store, read_trial_table
from tuner.config import StudyConfig
from tuner.storage import describe_url, storage_errors

__all__ = [
    "DASHBOARD_SECTIONS",
    "Section",
    "build_sections",
    "render_html",
    "save_to_dashboard",
    "write_report",
]

_logger = logging.getLogger(__name__)

# The user attributes that tuner lr-find, compare and train-best write. Named again rather
# than imported: tuner.final loads Keras, which would add seconds to every report.
LR_FIND_ATTR = "lr_find"
COMPARISON_ATTR = "schedule_comparison"
FINAL_MODEL_ATTR = "final_model"

MIN_TRIALS_FOR_IMPORTANCES = 2
MIN_TRIALS_FOR_PARALLEL = 2
# Below this many completed trials, importances rest on too few trials to trust.
FEW_TRIALS_FOR_IMPORTANCES = 10

Step = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class Section:
    """One part of the report: a figure, or a note saying why there is none.

    Attributes:
        key: Its HTML id, e.g. ``history``.
        title: Its heading.
        figure: The figure, if there is enough to draw.
        note: A line under the heading: where the data came from, or what is missing.
    """

    key: str
    title: str
    figure: go.Figure | None = None
    note: str = ""


@dataclass(frozen=True)
class _Study:
    """The study as read once for the report."""

    study: optuna.Study
    config: StudyConfig
    trials: list[FrozenTrial]
    completed: list[FrozenTrial]
    best: FrozenTrial | None
    user_attrs: dict[str, Any]


@contextlib.contextmanager
def _quiet_step(what: str) -> Iterator[None]:
    yield


def build_sections(
    study: optuna.Study, config: StudyConfig, step: Step = _quiet_step
) -> list[Section]:
    """Draws every section of the report from the study as it is now.

    Args:
        study: The study, possibly still running.
        config: Its configuration (for the artifact folder and training settings).
        step: Wraps each figure's drawing, e.g. to show progress. Defaults to nothing.

    Returns:
        The sections, in report order.
    """
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    snapshot = _Study(
        study=study,
        config=config,
        trials=trials,
        completed=completed,
        best=min(completed, key=lambda t: t.value or 0.0) if completed else None,
        user_attrs=study.user_attrs,
    )
    sections = []
    for number, (key, title, draw) in enumerate(_SECTIONS, start=1):
        with step(f"Figure {number}/{len(_SECTIONS)}: {title}"):
            try:
                figure, note = draw(snapshot)
            except Exception as e:  # One figure that cannot be drawn must not cost the report.
                _logger.warning("Could not draw the %s: %s", title.lower(), e, exc_info=True)
                figure, note = None, f"Could not be drawn: {e}"
        sections.append(Section(key, title, figure, note))
    return sections


_Drawn = tuple[go.Figure | None, str]


def _history(s: _Study) -> _Drawn:
    if not s.completed:
        return None, _waiting(s, "one completed trial")
    return optuna.visualization.plot_optimization_history(s.study), _states(s.trials)


def _trial_results(s: _Study) -> _Drawn:
    if s.best is None:
        return None, _waiting(s, "one completed trial")
    note = f"Validation MSE of each completed trial; the best, trial {s.best.number}, in red."
    return figures.trial_results_figure(s.trials), note


def _importances(s: _Study) -> _Drawn:
    if len(s.completed) < MIN_TRIALS_FOR_IMPORTANCES:
        return None, _waiting(s, f"{MIN_TRIALS_FOR_IMPORTANCES} completed trials")
    varying = sorted(
        name
        for name in {n for t in s.completed for n in t.params}
        if len({repr(t.params.get(name)) for t in s.completed}) > 1
    )
    if not varying:
        return None, "Every completed trial has the same parameters, so none explains more."
    with warnings.catch_warnings():
        # Optuna warns that importances of few trials are rough; the note says so.
        warnings.simplefilter("ignore")
        figure = optuna.visualization.plot_param_importances(s.study, params=varying)
    note = "How much each parameter explains the validation MSE (Optuna's PED-ANOVA)."
    if len(s.completed) < FEW_TRIALS_FOR_IMPORTANCES:
        note += f" With {len(s.completed)} completed trials, take them as a rough guide."
    return figure, note


def _parallel(s: _Study) -> _Drawn:
    if len(s.completed) < MIN_TRIALS_FOR_PARALLEL:
        return None, _waiting(s, f"{MIN_TRIALS_FOR_PARALLEL} completed trials")
    figure = optuna.visualization.plot_parallel_coordinate(s.study)
    return figure, "Each line is a completed trial, colored by its validation MSE."


def _lr_finder(s: _Study) -> _Drawn:
    rule = s.config.train.lr_suggestion
    found = s.user_attrs.get(LR_FIND_ATTR)
    if found:
        suggestions = dict(found.get("suggestions", {}))
        figure = figures.range_test_figure(found["lrs"], found["losses"], suggestions)
        note = f"From 'tuner lr-find' on {_format_params(found.get('params', {}))}."
        if rule in suggestions:
            note += f" The study's rule, {rule}, suggests {suggestions[rule]:.3g}."
        return figure, note
    trial = s.best
    table = read_trial_table(artifact_store(s.config), trial, RANGE_TEST) if trial else None
    if trial is None or table is None:
        return None, (
            "No range test yet: run 'tuner lr-find', or set [train] lr_finder = true so that "
            "each trial runs one."
        )
    suggestions = dict(trial.user_attrs.get("lr_suggestions", {}))
    if "lr_used" in trial.user_attrs:
        suggestions["used"] = trial.user_attrs["lr_used"]
    figure = figures.range_test_figure(
        table["lr"], table["loss"], suggestions, title=f"LR range test of trial {trial.number}"
    )
    note = (
        f"The best trial's own range test ([train] lr_finder = true): it trained at the "
        f"{rule} suggestion times lr_factor."
    )
    return figure, note


def _schedule(s: _Study) -> _Drawn:
    trial = s.best
    if trial is None:
        return None, _waiting(s, "one completed trial")
    table = read_trial_table(artifact_store(s.config), trial, LR_SCHEDULE)
    if table is None:
        return None, (
            f"Trial {trial.number} has no recorded schedule in {s.config.artifact_dir}: it "
            f"ran before trials recorded one, or the folder moved."
        )
    total = int(table["step"][-1]) + 1
    epochs = trial.user_attrs.get("epochs_trained")
    stopped = None
    if isinstance(epochs, int) and 0 < epochs < s.config.train.epochs:
        stopped = epochs * total // s.config.train.epochs
    name = "1-Cycle" if s.config.train.schedule == "one_cycle" else "Constant"
    figure = figures.lr_schedule_figure(
        table["step"],
        table["lr"],
        stopped_at=stopped,
        title=f"{name} schedule of trial {trial.number} (peak {max(table['lr']):.3g})",
    )
    note = f"The best trial's learning rate at each of its {total} planned steps."
    if stopped is not None:
        note += f" Early stopping ended it after {epochs} epochs."
    return figure, note


def _comparison(s: _Study) -> _Drawn:
    found = s.user_attrs.get(COMPARISON_ATTR)
    if not found:
        return None, "Not run yet: run 'tuner compare'."
    figure = figures.schedule_comparison_figure(
        found["fixed_val_loss"], found["one_cycle_val_loss"], found["learning_rate"]
    )
    scores = [
        f"{name} {_score(found.get(key + '_test_mse'), found.get(key + '_diverged'))}"
        for name, key in (("fixed LR", "fixed"), ("1-Cycle", "one_cycle"))
    ]
    return figure, f"Same hyperparameters and seed. Test MSE: {', '.join(scores)}."


def _score(test_mse: float | None, diverged: str | None) -> str:
    return f"{test_mse:.4f}" if test_mse is not None else f"none, it diverged ({diverged})"


def _final_model(s: _Study) -> _Drawn:
    found = s.user_attrs.get(FINAL_MODEL_ATTR)
    if not found:
        return None, "Not trained yet: run 'tuner train-best'."
    note = (
        f"Test MSE {found['test_mse']:.4f}, test MAE {found['test_mae']:.4f} (trial "
        f"{found['trial_number']}'s hyperparameters; saved to {found['path']})."
    )
    return figures.final_model_figure(found), note


_SECTIONS: tuple[tuple[str, str, Callable[[_Study], _Drawn]], ...] = (
    ("history", "Optimization history", _history),
    ("trials", "Trial results", _trial_results),
    ("importances", "Parameter importances", _importances),
    ("parallel", "Parallel coordinates", _parallel),
    ("lr-finder", "LR range test", _lr_finder),
    ("schedule", "Learning-rate schedule", _schedule),
    ("comparison", "Fixed LR vs 1-Cycle", _comparison),
    ("final-model", "Final model", _final_model),
)

# The sections the dashboard does not draw itself, saved to the study for it.
DASHBOARD_SECTIONS = ("trials", "lr-finder", "schedule", "comparison", "final-model")


def _states(trials: list[FrozenTrial]) -> str:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return "Trials: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + "."


def _waiting(s: _Study, needed: str) -> str:
    running = sum(1 for t in s.trials if t.state == TrialState.RUNNING)
    have = f"{len(s.completed)} completed" + (f", {running} running" if running else "")
    return f"Needs at least {needed}; the study has {have} so far."


def render_html(study: optuna.Study, config: StudyConfig, sections: list[Section]) -> str:
    """The report as one HTML document, with plotly's JavaScript embedded once."""
    trials = study.get_trials(deepcopy=False)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    status = (
        f"<strong>Still running</strong>: {running} trial(s) were running when this was written."
        if running
        else ""
    )
    contents = "".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in sections)
    body = []
    for section in sections:
        parts = [f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>']
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        if section.figure is not None:
            parts.append(
                pio.to_html(
                    section.figure,
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"figure-{section.key}",
                    default_height="480px",
                    config={"responsive": True, "displaylogo": False},
                )
            )
        parts.append("</section>")
        body.append("".join(parts))
    name = html.escape(study.study_name)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tuner report: {name}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }}
.note {{ color: #444; }}
section {{ margin-bottom: 2.5em; }}
</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
</head>
<body>
<h1>Study {name}</h1>
<p>{html.escape(_states(trials))} Storage {html.escape(describe_url(config.study.storage))};
study file {html.escape(str(config.path))}. Written {html.escape(generated)}. {status}</p>
<ul>{contents}</ul>
{"".join(body)}
</body>
</html>
"""


def write_report(
    study: optuna.Study, config: StudyConfig, output: Path, sections: list[Section]
) -> None:
    """Writes the report's HTML to ``output``, creating its folder."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(study, config, sections), encoding="utf-8")


def save_to_dashboard(
    study: optuna.Study, config: StudyConfig, sections: list[Section]
) -> list[str]:
    """Saves tuner's own figures in the study, where the dashboard shows them.

    Each has a fixed ID, so the next report replaces it rather than adding another.

    Returns:
        The IDs of the figures saved.

    Raises:
        StorageError: The database refused the write, e.g. it is read-only.
    """
    from optuna_dashboard import save_plotly_graph_object

    saved = []
    with storage_errors(config.study.storage):
        for section in sections:
            if section.figure is not None and section.key in DASHBOARD_SECTIONS:
                graph_id = f"tuner-{section.key}"
                save_plotly_graph_object(study, section.figure, graph_object_id=graph_id)
                saved.append(graph_id)
    return saved


def _format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
