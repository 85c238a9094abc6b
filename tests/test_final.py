"""The notebook's last steps on a tuned study: here, a fixed LR that diverges in `compare`."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.support import run_cli, tiny_study
from tuner.config import load_study_config
from tuner.final import COMPARISON_ATTR, Comparison
from tuner.report import build_sections

# SGD on the tiny CSV overflows within a few epochs at this LR, fixed or as a 1-Cycle peak.
DIVERGING_LR = 1.2
FIXED = {"n_hidden": 1, "n_neurons": 8, "batch_size": 64, "activation": "relu"}


def test_a_diverged_run_has_no_score_and_no_improvement() -> None:
    comparison = Comparison(
        learning_rate=0.1,
        fixed_val_loss=[0.9, 5.0],
        one_cycle_val_loss=[0.8, 0.5, 0.4],
        fixed_test_mse=None,
        one_cycle_test_mse=0.41,
        fixed_diverged="training loss became inf in epoch 3 at learning rate 0.1.",
    )
    assert comparison.improvement_percent is None
    scored = Comparison(0.1, [0.5], [0.4], fixed_test_mse=0.5, one_cycle_test_mse=0.4)
    assert scored.improvement_percent == pytest.approx(20.0)


@pytest.mark.slow
def test_compare_reports_a_diverging_run_instead_of_crashing(tmp_path: Path) -> None:
    space = {"learning_rate": {"low": 0.1, "high": 2.0, "log": True}, **FIXED}
    study_file, url = tiny_study(tmp_path, n_trials=1, epochs=6, space=space)
    assert run_cli("init", str(study_file)).returncode == 0
    config = load_study_config(study_file, environ={})
    # The best trial, as if the search had found it: an LR that no schedule survives.
    params = {**FIXED, "learning_rate": DIVERGING_LR}
    distributions = {name: config.space[name] for name in params}
    study = optuna.load_study(study_name="tiny", storage=url)
    study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=1))

    result = run_cli("compare", str(study_file))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines if "diverged:" in line] == [
        "fixed LR  diverged",
        "1-Cycle   diverged",
    ]
    assert not any("% lower" in line or "% higher" in line for line in lines)
    stored = optuna.load_study(study_name="tiny", storage=url).user_attrs[COMPARISON_ATTR]
    assert stored["fixed_test_mse"] is None and stored["one_cycle_test_mse"] is None
    assert all("loss became" in stored[f"{run}_diverged"] for run in ("fixed", "one_cycle"))
    # Each run keeps its curve up to where it diverged, for the figure.
    assert 1 <= len(stored["fixed_val_loss"]) < 6
    assert 1 <= len(stored["one_cycle_val_loss"]) < 6

    sections = build_sections(optuna.load_study(study_name="tiny", storage=url), config)
    [comparison] = [s for s in sections if s.key == "comparison"]
    assert comparison.figure is not None
    assert "fixed LR none, it diverged (" in comparison.note
