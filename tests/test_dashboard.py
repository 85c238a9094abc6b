"""``tuner dashboard`` end to end: a real study, the real dashboard process, a real HTTP client."""

from __future__ import annotations

import csv
import io
import json
import math
import queue
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.support import ROOT, run_cli, tiny_study, trials_of, tuner_command

pytestmark = pytest.mark.slow

N_TRIALS = 2
EPOCHS = 3
ARTIFACTS = {
    "learning_curves.svg",
    "learning_curves.csv",
    "lr_schedule.svg",
    "lr_schedule.csv",
    "lr_range_test.svg",
    "lr_range_test.csv",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A study run by `tuner run`, with the LR finder on so every curve is recorded."""
    folder = tmp_path_factory.mktemp("dashboard")
    study_file, url = tiny_study(
        folder,
        n_trials=N_TRIALS,
        epochs=EPOCHS,
        train={"lr_finder": True},
        space={
            "lr_factor": {"low": 0.5, "high": 2.0},
            "n_hidden": 1,
            "n_neurons": {"low": 4, "high": 16},
            "batch_size": 64,
            "activation": "relu",
        },
    )
    result = run_cli("run", str(study_file), "--workers", "1")
    assert result.returncode == 0, result.stderr
    return study_file, url


class _Server:
    """A `tuner dashboard` subprocess and the URL it printed."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.base = url.split("/dashboard")[0]

    def get(self, path: str) -> tuple[bytes, str]:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return response.read(), response.headers.get("Content-Type", "")

    def json(self, path: str) -> Any:
        return json.loads(self.get(path)[0])


@pytest.fixture
def dashboard(study: tuple[Path, str]) -> Iterator[_Server]:
    study_file, _ = study
    process = subprocess.Popen(
        tuner_command("dashboard", str(study_file), "--port", "0"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _first_line(process, timeout=120)
        assert url.startswith("Open http://127.0.0.1:"), url
        server = _Server(process, url.removeprefix("Open ").strip())
        _wait_until_it_answers(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the dashboard printed no URL; stderr: {err}") from None


def _wait_until_it_answers(server: _Server) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            server.get("/api/meta")
            return
        except (urllib.error.URLError, ConnectionError):
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_dashboard_lists_the_study_its_trials_and_their_curves(
    study: tuple[Path, str], dashboard: _Server
) -> None:
    _, url = study
    assert dashboard.json("/api/meta")["artifact_is_available"] is True
    summaries = dashboard.json("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["tiny"]
    study_id = summaries[0]["study_id"]
    assert dashboard.url.endswith(f"/dashboard/studies/{study_id}")

    detail = dashboard.json(f"/api/studies/{study_id}")
    stored = {t.number: t for t in trials_of(url, "tiny") if t.state == TrialState.COMPLETE}
    assert len(stored) == N_TRIALS
    completed = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert sorted(t["number"] for t in completed) == sorted(stored)
    assert "sampler: random" in detail["note"]["body"]  # the settings note, from study creation

    for trial in completed:
        by_name = {a["filename"]: a for a in trial["artifacts"]}
        assert set(by_name) == ARTIFACTS
        assert by_name["learning_curves.svg"]["mimetype"] == "image/svg+xml"
        prefix = f"/artifacts/{study_id}/{trial['trial_id']}/"

        body, content_type = dashboard.get(prefix + by_name["learning_curves.csv"]["artifact_id"])
        assert content_type.startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        frozen = stored[trial["number"]]
        assert len(rows) == frozen.user_attrs["epochs_trained"]
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        # The objective's value is the best validation MSE, the lowest of the curve.
        assert math.isclose(min(float(r["val_mse"]) for r in rows), frozen.value, rel_tol=1e-5)

        svg, content_type = dashboard.get(prefix + by_name["lr_range_test.svg"]["artifact_id"])
        assert content_type == "image/svg+xml"
        assert svg.startswith(b"<svg") and b"<polyline" in svg
        assert b"min_div_10" in svg  # the suggestion's marker
        schedule, _ = dashboard.get(prefix + by_name["lr_schedule.csv"]["artifact_id"])
        peak = max(float(r["lr"]) for r in csv.DictReader(io.StringIO(schedule.decode())))
        assert peak <= frozen.user_attrs["lr_used"] * (1 + 1e-6)
        assert peak > frozen.user_attrs["lr_used"] * 0.9


def test_a_running_study_is_served_live(study: tuple[Path, str], dashboard: _Server) -> None:
    # A trial started after the dashboard did shows up once its 2-second cache expires.
    _, url = study
    study_id = dashboard.json("/api/studies")["study_summaries"][0]["study_id"]
    before = len(dashboard.json(f"/api/studies/{study_id}")["trials"])
    loaded = optuna.load_study(study_name="tiny", storage=url)
    trial = loaded.ask()
    try:
        deadline = time.monotonic() + 30
        while True:
            states = [t["state"] for t in dashboard.json(f"/api/studies/{study_id}")["trials"]]
            if len(states) > before or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(states) == before + 1 and states[-1] == "Running"
    finally:
        loaded.tell(trial, state=TrialState.FAIL)


def test_a_missing_database_is_one_line_telling_what_to_run(tmp_path: Path) -> None:
    study_file, _ = tiny_study(tmp_path)
    result = run_cli("dashboard", str(study_file), "--port", "0")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tuner: error: ")
    assert "tuner init" in result.stderr and "does not exist" in result.stderr


def test_a_port_in_use_is_a_clear_error(study: tuple[Path, str]) -> None:
    study_file, _ = study
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("dashboard", str(study_file), "--port", str(port))
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"tuner: error: cannot listen on 127.0.0.1:{port}")
    assert "--port" in last_line
