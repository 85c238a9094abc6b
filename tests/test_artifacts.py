"""A trial's curve files: their content, their SVG, and reading them back from the store."""

from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import optuna
import pytest

from tests.support import tiny_study
from tuner.artifacts import TrialArtifacts, artifact_store, read_trial_table, trial_files
from tuner.config import TrainSettings, load_study_config
from tuner.lr_finder import RangeTestResult
from tuner.one_cycle import one_cycle_lr
from tuner.recipe import TrainedModel
from tuner.svg_chart import Marker, Series, line_chart
from tuner.training import TrainingHistory

SVG = "{http://www.w3.org/2000/svg}"
PEAK = 0.05
STEPS_PER_EPOCH = 10


def _trained(epochs: int, range_test: RangeTestResult | None = None) -> TrainedModel:
    history = TrainingHistory(
        loss=[1.0 / (e + 1) for e in range(epochs)],
        val_loss=[1.2 / (e + 1) for e in range(epochs)],
        val_mae=[0.9 / (e + 1) for e in range(epochs)],
        lr=[PEAK] * epochs,
    )
    suggestion = 0.01 if range_test is not None else None
    return TrainedModel(
        model=None,
        history=history,
        learning_rate=PEAK,
        range_test=range_test,
        lr_suggestion=suggestion,
        total_steps=5 * STEPS_PER_EPOCH,
    )


def _table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ElementTree.fromstring(svg)  # also checks that it is well-formed XML
    return [
        [tuple(map(float, p.split(","))) for p in line.attrib["points"].split()]
        for line in root.iter(f"{SVG}polyline")
    ]


def test_a_trial_stores_its_learning_curves_and_schedule() -> None:
    files = trial_files(_trained(epochs=3), TrainSettings(epochs=5))
    assert set(files) == {
        "learning_curves.svg",
        "learning_curves.csv",
        "lr_schedule.svg",
        "lr_schedule.csv",
    }
    rows = _table(files["learning_curves.csv"])
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [float(r["val_mse"]) for r in rows] == pytest.approx([1.2, 0.6, 0.4])
    assert len(_polylines(files["learning_curves.svg"])) == 2  # training and validation

    schedule = _table(files["lr_schedule.csv"])
    steps = [int(r["step"]) for r in schedule]
    assert steps[0] == 0 and steps[-1] == 5 * STEPS_PER_EPOCH - 1
    lrs = [float(r["lr"]) for r in schedule]
    assert lrs == pytest.approx([one_cycle_lr(s, 5 * STEPS_PER_EPOCH, PEAK) for s in steps])
    assert max(lrs) == pytest.approx(PEAK, rel=0.05)
    # Early stopping after 3 of 5 epochs is marked where it happened.
    assert "early stop" in files["lr_schedule.svg"]


def test_a_constant_schedule_is_flat_and_a_full_run_has_no_stop_mark() -> None:
    files = trial_files(_trained(epochs=5), TrainSettings(epochs=5, schedule="constant"))
    assert {float(r["lr"]) for r in _table(files["lr_schedule.csv"])} == {PEAK}
    assert "early stop" not in files["lr_schedule.svg"]


def test_the_range_test_is_drawn_without_its_diverged_steps() -> None:
    lrs = np.geomspace(1e-5, 1.0, 50)
    losses = np.linspace(2.0, 0.5, 50)
    losses[-1] = np.inf  # the step that stopped the test
    files = trial_files(_trained(3, RangeTestResult(lrs, losses)), TrainSettings(epochs=5))
    rows = _table(files["lr_range_test.csv"])
    assert len(rows) == 50 and rows[-1]["loss"] == "inf"
    (curve,) = _polylines(files["lr_range_test.svg"])
    assert len(curve) == 49
    assert all(math.isfinite(x) and math.isfinite(y) for x, y in curve)
    assert "min_div_10: 0.01" in files["lr_range_test.svg"]


def test_svg_charts_stay_inside_their_axes() -> None:
    svg = line_chart(
        [Series("a", [1, 2, 3], [0.0, 5.0, 100.0])],
        title="t & <b>",
        x_label="x",
        y_label="y",
        y_range=(0.0, 10.0),
        markers=[Marker(2.0, "here")],
    )
    (curve,) = _polylines(svg)
    ys = [y for _, y in curve]
    assert ys[1] < ys[0]  # higher values are drawn higher
    assert 0 < ys[2] < ys[1]  # 100 is clipped to the top of the 0..10 axis, not off the chart
    assert "t &amp; &lt;b&gt;" in svg


def test_stored_tables_read_back_and_a_deleted_one_reads_as_none(tmp_path: Path) -> None:
    study_file, _ = tiny_study(tmp_path)
    config = load_study_config(study_file)
    study = optuna.create_study()
    trial = study.ask()
    TrialArtifacts(config)(trial, _trained(epochs=5))
    study.tell(trial, 0.1)
    frozen = study.trials[0]
    store = artifact_store(config)
    table = read_trial_table(store, frozen, "learning_curves")
    assert table is not None and table["epoch"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert read_trial_table(store, frozen, "lr_range_test") is None  # no LR finder here

    # The dashboard records a deleted artifact as null.
    for key, value in frozen.system_attrs.items():
        if json.loads(value)["filename"] == "learning_curves.csv":
            frozen.system_attrs[key] = json.dumps(None)
    assert read_trial_table(store, frozen, "learning_curves") is None
