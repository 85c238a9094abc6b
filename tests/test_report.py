"""``tuner report``: every section, offline, for full, small, empty and running studies."""

from __future__ import annotations

import math
import os
import pty
import re
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.support import ROOT, run_cli, tiny_study, tuner_command
from tuner import report
from tuner.config import load_study_config
from tuner.figures import range_test_figure, trial_results_figure

SECTIONS = [
    "history",
    "trials",
    "importances",
    "parallel",
    "lr-finder",
    "schedule",
    "comparison",
    "final-model",
]


@dataclass
class _Page:
    """What a report's HTML holds, as a browser would see it."""

    sections: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # the section of each plotly div
    notes: dict[str, str] = field(default_factory=dict)
    script_sources: list[str] = field(default_factory=list)
    inline_scripts: list[str] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = _Page()
        self._section: str | None = None
        self._in: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self._section = attributes["id"]
            self.page.sections.append(attributes["id"] or "")
        elif tag == "div" and "plotly-graph-div" in (attributes.get("class") or ""):
            self.page.figures.append(self._section or "")
        elif tag == "script":
            if attributes.get("src"):
                self.page.script_sources.append(attributes["src"] or "")
            self._in, self._text = "script", []
        elif tag == "p" and attributes.get("class") == "note" and self._section:
            self._in, self._text = "note", []

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in == "script":
            self.page.inline_scripts.append("".join(self._text))
            self._in = None
        elif tag == "p" and self._in == "note" and self._section:
            self.page.notes[self._section] = "".join(self._text)
            self._in = None
        elif tag == "section":
            self._section = None


def _read(html: str) -> _Page:
    reader = _Reader()
    reader.feed(html)
    return reader.page


def _assert_offline(page: _Page) -> None:
    assert page.script_sources == []  # nothing fetched: no CDN, no file beside it
    bundles = [s for s in page.inline_scripts if len(s) > 1_000_000]
    assert len(bundles) == 1  # plotly.js, once for all figures
    assert "plotly.js" in bundles[0][:200].lower()


# Small studies, made with plain Optuna: no training needed.


def _study(tmp_path: Path, trials: list[optuna.trial.FrozenTrial]) -> tuple[optuna.Study, Path]:
    study_file, url = tiny_study(tmp_path)
    study = optuna.create_study(study_name="tiny", storage=url)
    for trial in trials:
        study.add_trial(trial)
    return study, study_file


def _trial(
    value: float | None, lr: float, state: TrialState = TrialState.COMPLETE
) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        value=value,
        params={"learning_rate": lr, "activation": "relu"},
        distributions={
            "learning_rate": FloatDistribution(1e-3, 1e-1, log=True),
            "activation": CategoricalDistribution(["relu", "tanh"]),
        },
        user_attrs={"epochs_trained": 2},
    )


def test_a_study_without_a_completed_trial_says_what_each_figure_waits_for(tmp_path: Path) -> None:
    study, study_file = _study(
        tmp_path, [_trial(None, 0.01, TrialState.FAIL), _trial(None, 0.02, TrialState.RUNNING)]
    )
    config = load_study_config(study_file)
    sections = report.build_sections(study, config)
    assert [s.key for s in sections] == SECTIONS
    assert all(s.figure is None for s in sections)
    page = _read(report.render_html(study, config, sections))
    assert page.sections == SECTIONS and page.figures == []
    assert page.notes["history"] == (
        "Needs at least one completed trial; the study has 0 completed, 1 running so far."
    )
    assert page.notes["comparison"] == "Not run yet: run 'tuner compare'."
    assert page.notes["final-model"] == "Not trained yet: run 'tuner train-best'."
    assert "tuner lr-find" in page.notes["lr-finder"]


def test_one_trial_draws_what_it_can_and_says_why_not_the_rest(tmp_path: Path) -> None:
    study, study_file = _study(tmp_path, [_trial(0.5, 0.01)])
    config = load_study_config(study_file)
    sections = {s.key: s for s in report.build_sections(study, config)}
    assert sections["history"].figure is not None and sections["trials"].figure is not None
    assert sections["importances"].figure is None
    assert sections["importances"].note.startswith("Needs at least 2 completed trials")
    assert sections["parallel"].figure is None
    # No worker stored this trial's schedule; the report says so rather than failing.
    assert sections["schedule"].figure is None
    assert "has no recorded schedule" in sections["schedule"].note
    page = _read(report.render_html(study, config, list(sections.values())))
    assert page.figures == ["history", "trials"]
    _assert_offline(page)


def test_importances_need_a_parameter_that_varies(tmp_path: Path) -> None:
    study, study_file = _study(tmp_path, [_trial(0.5, 0.01), _trial(0.4, 0.01)])
    sections = {s.key: s for s in report.build_sections(study, load_study_config(study_file))}
    assert sections["importances"].figure is None
    assert "same parameters" in sections["importances"].note
    assert sections["parallel"].figure is not None


def test_the_bar_chart_highlights_the_best_trial() -> None:
    trials = [_trial(0.5, 0.01), _trial(0.3, 0.02), _trial(None, 0.03, TrialState.FAIL)]
    for number, trial in enumerate(trials):
        trial.number = number
    bars = trial_results_figure(trials).data[0]
    assert list(bars.x) == [0, 1]  # completed trials only
    colors = list(bars.marker.color)
    assert colors[1] != colors[0]  # trial 1, the lowest MSE, stands out


def test_range_test_labels_sit_on_their_lines_and_do_not_overlap() -> None:
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    suggestions = {"min_div_10": 1e-3, "valley": 1.1e-3}
    figure = range_test_figure(lrs, [1.0, 0.5, 0.4, 2.0], suggestions)
    lines = [shape.x0 for shape in figure.layout.shapes]
    labels = figure.layout.annotations
    assert lines == [1e-3, 1.1e-3]
    assert [a.text for a in labels] == ["min_div_10: 0.001", "valley: 0.0011"]
    # The x axis is logarithmic: an annotation's x is the line's LR in decades.
    assert [a.x for a in labels] == pytest.approx([-3.0, math.log10(1.1e-3)])
    assert labels[0].yshift != labels[1].yshift


@pytest.mark.slow
def test_on_a_terminal_each_step_completes_on_its_own_line(tmp_path: Path) -> None:
    _, study_file = _study(tmp_path, [_trial(0.5, 0.01)])
    terminal, stderr = pty.openpty()
    process = subprocess.Popen(
        tuner_command("report", str(study_file)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    os.close(stderr)
    output = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        output += chunk
    os.close(terminal)
    assert process.wait(timeout=120) == 0, output
    lines = output.decode().splitlines()
    assert any(line.startswith("Figure 1/8: Optimization history ... done (") for line in lines)
    assert "Figure 1/8: Optimization history done" not in output.decode()  # the plain form


# The real thing: tuner run, lr-find, compare, train-best, report.


@pytest.mark.slow
def test_report_of_a_real_study_before_and_after_the_final_steps(tmp_path: Path) -> None:
    study_file, url = tiny_study(
        tmp_path,
        n_trials=3,
        epochs=3,
        train={"lr_finder": True},
        space={
            "lr_factor": {"low": 0.5, "high": 2.0},
            "n_hidden": 1,
            "n_neurons": {"low": 4, "high": 16},
            "batch_size": 64,
            "activation": {"choices": ["relu", "tanh"]},
        },
    )
    assert run_cli("run", str(study_file), "--workers", "1").returncode == 0

    first = tmp_path / "first.html"
    result = run_cli("report", str(study_file), "--output", str(first))
    assert result.returncode == 0, result.stderr
    assert f"Report with 6 of 8 figures: {first}" in result.stdout
    # Progress as plain lines, since stderr is not a terminal.
    assert "Figure 3/8: Parameter importances done (" in result.stderr
    page = _read(first.read_text())
    assert page.sections == SECTIONS
    _assert_offline(page)
    assert page.figures == SECTIONS[:6]
    # Without 'tuner lr-find', the LR section shows the best trial's own range test.
    assert page.notes["lr-finder"].startswith("The best trial's own range test")
    assert page.notes["comparison"] == "Not run yet: run 'tuner compare'."

    for command in ("lr-find", "compare"):
        done = run_cli(command, str(study_file), "--output", str(tmp_path / f"{command}.html"))
        assert done.returncode == 0, done.stderr
    trained = run_cli("train-best", str(study_file), "--output", str(tmp_path / "final.keras"))
    assert trained.returncode == 0, trained.stderr
    epoch_lines = [line for line in trained.stderr.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and epoch_lines[0].startswith("epoch 1/3: train MSE ")
    assert "\r" not in trained.stderr  # no redrawn bar

    second = tmp_path / "second.html"
    result = run_cli("report", str(study_file), "--output", str(second))
    assert result.returncode == 0, result.stderr
    page = _read(second.read_text())
    assert page.figures == SECTIONS
    _assert_offline(page)
    assert page.notes["lr-finder"].startswith("From 'tuner lr-find'")
    final = optuna.load_study(study_name="tiny", storage=url).user_attrs["final_model"]
    assert (
        f"Test MSE {final['test_mse']:.4f}, test MAE {final['test_mae']:.4f}"
        in (page.notes["final-model"])
    )

    # tuner's own figures are in the study for the dashboard, under fixed IDs.
    storage = optuna.storages.RDBStorage(url)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("tiny"))
    saved = {m.group(1) for k in attrs if (m := re.match(r"dashboard:plot_data:(.+):\d+$", k))}
    assert saved == {f"tuner-{key}" for key in report.DASHBOARD_SECTIONS}
