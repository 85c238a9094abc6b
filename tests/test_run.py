"""End to end on SQLite: the real CLI, real worker processes, a real database file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.cluster import (
    FAULT_EPOCHS,
    FAULT_STUDY,
    FAULT_TRAIN,
    StudyWatch,
    assert_exact_budget,
    running,
)
from tests.support import run_cli, tiny_study, trials_of, tuner_command

pytestmark = pytest.mark.slow

FINISHED = {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}


def _assert_exact_budget(url: str, name: str, n_trials: int) -> list:
    trials = trials_of(url, name)
    assert len(trials) == n_trials
    assert {t.state for t in trials} <= FINISHED, [t.state for t in trials]
    assert sorted(t.number for t in trials) == list(range(n_trials))
    return trials


def test_run_with_two_workers_uses_the_exact_budget(tmp_path: Path) -> None:
    study_file, url = tiny_study(tmp_path, n_trials=8)
    result = run_cli("run", str(study_file), "--workers", "2")
    assert result.returncode == 0, result.stderr
    trials = _assert_exact_budget(url, "tiny", 8)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # Each worker has its own sampler seed, so no two trials drew the same values.
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8
    assert all({"val_mae", "epochs_trained", "train_seconds"} <= set(t.user_attrs) for t in trials)
    best = min(trials, key=lambda t: t.value)
    assert f"Best trial {best.number}: validation MSE {best.value:.4f}" in result.stdout
    assert "[8/8]" in result.stderr  # plain progress lines, since stderr is not a terminal

    # Plain Optuna's CLI reads the same trials.
    listed = subprocess.run(
        [
            str(Path(sys.executable).with_name("optuna")),
            "trials",
            "--storage",
            url,
            "--study-name",
            "tiny",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(row["number"] for row in json.loads(listed.stdout)) == list(range(8))


def test_four_workers_share_one_sqlite_file_without_lock_errors(tmp_path: Path) -> None:
    study_file, url = tiny_study(tmp_path, n_trials=12, epochs=1)
    result = run_cli("--log-level", "debug", "run", str(study_file), "--workers", "4")
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    _assert_exact_budget(url, "tiny", 12)


def test_workers_started_together_on_a_new_database_create_one_study(tmp_path: Path) -> None:
    study_file, url = tiny_study(tmp_path, n_trials=6, epochs=1)
    workers = [
        subprocess.Popen(
            tuner_command("worker", str(study_file), "--worker-index", str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in outputs]
    import optuna

    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["tiny"]
    _assert_exact_budget(url, "tiny", 6)


def test_a_diverging_trial_fails_alone_and_the_worker_goes_on(tmp_path: Path) -> None:
    # A constant LR of 100 makes SGD diverge at once; the others train normally.
    study_file, url = tiny_study(
        tmp_path,
        n_trials=6,
        epochs=2,
        train={"schedule": "constant"},
        space={
            "learning_rate": {"choices": [0.01, 100.0]},
            "n_hidden": 1,
            "n_neurons": 8,
            "batch_size": 64,
            "activation": "relu",
        },
    )
    result = run_cli("run", str(study_file), "--workers", "1")
    assert result.returncode == 0, result.stderr
    trials = _assert_exact_budget(url, "tiny", 6)
    diverged = [t for t in trials if t.params["learning_rate"] == 100.0]
    trained = [t for t in trials if t.params["learning_rate"] == 0.01]
    assert diverged and trained
    assert all(t.state == TrialState.FAIL for t in diverged)
    assert all("TrainingDivergedError" in t.user_attrs["error"] for t in diverged)
    assert all(t.state == TrialState.COMPLETE for t in trained)


def test_every_trial_failing_stops_the_worker_with_a_message(tmp_path: Path) -> None:
    study_file, url = tiny_study(
        tmp_path,
        n_trials=20,
        epochs=3,
        train={"schedule": "constant"},
        study={"max_consecutive_failures": 3},
        space={
            "learning_rate": 100.0,
            "n_hidden": 1,
            "n_neurons": 8,
            "batch_size": 64,
            "activation": "relu",
        },
    )
    result = run_cli("worker", str(study_file))
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("tuner: error: 3 trials failed in a row")
    assert "TrainingDivergedError" in last_line
    assert "Traceback" not in result.stderr
    trials = trials_of(url, "tiny")
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # the rest of the budget is kept


def test_a_resumed_study_runs_up_to_the_new_budget(tmp_path: Path) -> None:
    study_file, url = tiny_study(tmp_path, n_trials=3, epochs=1)
    assert run_cli("run", str(study_file), "--workers", "1").returncode == 0
    result = run_cli("run", str(study_file), "--workers", "2", "--n-trials", "5")
    assert result.returncode == 0, result.stderr
    _assert_exact_budget(url, "tiny", 5)

    best = run_cli("best", str(study_file), "--json")
    assert best.returncode == 0, best.stderr
    shown = json.loads(best.stdout)
    stored = min((t for t in trials_of(url, "tiny")), key=lambda t: t.value)
    assert shown["number"] == stored.number and shown["value"] == stored.value
    assert shown["params"] == stored.params


def test_ctrl_c_stops_run_and_its_workers_and_the_same_command_resumes(tmp_path: Path) -> None:
    study_file, url = tiny_study(
        tmp_path, n_trials=6, epochs=FAULT_EPOCHS, study=FAULT_STUDY, train=FAULT_TRAIN
    )
    log = (tmp_path / "run.log").open("w")
    # Its own process group, which Ctrl-C on a terminal signals as a whole: run and workers.
    run = subprocess.Popen(
        tuner_command("run", str(study_file), "--workers", "2"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        StudyWatch(url, "tiny").wait_until(lambda ts: len(running(ts)) == 2)
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        log.close()
    interrupted = trials_of(url, "tiny")
    assert not running(interrupted), [t.state for t in interrupted]
    stopped = [t for t in interrupted if "interrupted" in t.user_attrs]
    assert len(stopped) == 2 and all(t.state == TrialState.FAIL for t in stopped)

    result = run_cli("run", str(study_file), "--workers", "2")
    assert result.returncode == 0, result.stderr
    trials = trials_of(url, "tiny")
    # The stopped trials were queued again and run; they do not count toward the budget.
    retried = assert_exact_budget(trials, 6)
    assert {t.number for t in retried} == {t.number for t in stopped}
