"""docker-compose.yml: its structure, and the commands its services run, run as processes.

No Docker engine runs here, so the file is read as YAML and checked for what matters
(services, health check, start order, the dashboard on 127.0.0.1 only, no secrets), and the
init, worker and dashboard commands run against a real PostgreSQL server with the
environment the compose file gives them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml

from tests.cluster import Worker, assert_exact_budget
from tests.postgres import USER, PostgresDatabase, _free_port
from tests.support import ROOT, tiny_study, trials_of, tuner_command

COMPOSE = ROOT / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        value = env.get(name)
        missing = value is None or (value == "" and operator in (":-", ":?"))
        if operator in ("-", ":-") and missing:
            return argument
        if operator in ("?", ":?") and missing:
            raise ValueError(f"{name}: {argument}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in [str(key), *_strings(value)]]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [str(node)]


def test_the_compose_file_runs_postgres_init_workers_and_a_local_dashboard() -> None:
    services = _services()
    assert set(services) == {"postgres", "init", "worker", "dashboard"}

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    init, worker, dashboard = services["init"], services["worker"], services["dashboard"]
    assert init["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert init["command"][0] == "init" and init["restart"] == "no"
    assert worker["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert dashboard["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert worker["command"][0] == "worker"
    # A worker that publishes a port or names its container cannot be scaled.
    assert "ports" not in worker and "container_name" not in worker
    assert dashboard["command"][:1] == ["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    for name, service in services.items():
        assert "ports" not in service or name == "dashboard"
    # Every service of the image reads the same storage, and the password only from .env.
    for name in ("init", "worker", "dashboard"):
        environment = services[name]["environment"]
        assert environment["TUNER_STORAGE"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in environment["TUNER_STORAGE"]
        assert environment["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_no_password_is_written_in_the_compose_file_or_the_image() -> None:
    services = _services()
    env = {"POSTGRES_PASSWORD": "sentinel-password"}
    for service in services.values():
        for key, value in service.get("environment", {}).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", value), (key, value)
            else:  # The password goes nowhere else, URLs included.
                assert "sentinel-password" not in interpolate(value, env), key
        for text in _strings(service):
            for url in re.findall(r"\w+(?:\+\w+)?://\S+", interpolate(text, env)):
                assert sqlalchemy.engine.make_url(url).password is None, url
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"(?im)^\s*(ENV|ARG)\b.*(PASSWORD|TUNER_STORAGE)", dockerfile)
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["POSTGRES_PASSWORD"] == ""  # compose refuses to start until it is set
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    # The build context is everything listed after "*", which excludes all else (.env too).
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and r[0] != "#"]
    assert rules[0] == "*" and not [r for r in rules if ".env" in r]
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(services["worker"]["environment"]["PGPASSWORD"], {})


def _service_run(
    service: dict[str, Any], env: dict[str, str], server_port: int
) -> tuple[list[str], dict[str, str]]:
    """A service's command line and environment, on this host instead of the compose network."""
    command = [interpolate(part, env) for part in service["command"]]
    environment = {key: interpolate(value, env) for key, value in service["environment"].items()}
    # The compose network names the server 'postgres'; here it is a local port.
    environment["TUNER_STORAGE"] = environment["TUNER_STORAGE"].replace(
        "@postgres:5432/", f"@127.0.0.1:{server_port}/"
    )
    return tuner_command(*command), environment


@pytest.mark.slow
@pytest.mark.postgres
def test_the_services_commands_run_a_study_to_its_exact_budget(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    study_file, _ = tiny_study(tmp_path, n_trials=6, epochs=2)
    env = {
        "POSTGRES_PASSWORD": postgres_db.password,
        "POSTGRES_USER": USER,
        "POSTGRES_DB": postgres_db.name,
        "STUDY_FILE": str(study_file),
    }
    services = _services()
    port = postgres_db.server.port
    # The password reaches the processes as PGPASSWORD only, as in the containers.
    base = {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "PGPASSWORD")}

    command, environment = _service_run(services["init"], env, port)
    assert "PGPASSWORD" in environment and postgres_db.password not in " ".join(command)
    init = subprocess.run(
        command, cwd=ROOT, env={**base, **environment}, capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr
    assert postgres_db.password not in init.stdout + init.stderr

    command, environment = _service_run(services["worker"], env, port)
    worker_env = {**base, **environment}
    workers = [
        Worker(study_file, tmp_path / f"worker{i}.log", command=command, env=worker_env)
        for i in range(3)  # docker compose up --scale worker=3
    ]
    try:
        codes = [w.wait() for w in workers]
        assert codes == [0, 0, 0], [w.output()[-2000:] for w in workers]
    finally:
        for worker in workers:
            worker.stop()
    assert all(postgres_db.password not in w.output() for w in workers)
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_db.url)] == ["tiny"]
    trials = trials_of(postgres_db.url, "tiny")
    assert assert_exact_budget(trials, 6) == []
    assert len(trials) == 6

    command, environment = _service_run(services["dashboard"], env, port)
    free = str(_free_port())  # 8080 inside the container; any free port here
    command = [free if part == "8080" else part for part in command]
    dashboard = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**base, **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dashboard.stdout is not None
        opened = dashboard.stdout.readline().split()  # "Open http://HOST:PORT/dashboard/..."
        assert opened and opened[0] == "Open", opened
        shown = urllib.parse.urlsplit(opened[1])
        assert shown.port == int(free)
        local = f"http://127.0.0.1:{free}"
        with urllib.request.urlopen(local + shown.path, timeout=30) as response:
            assert response.status == 200
        with urllib.request.urlopen(local + "/api/studies", timeout=30) as response:
            assert b'"tiny"' in response.read()
    finally:
        dashboard.send_signal(signal.SIGINT)
        _, stderr = dashboard.communicate(timeout=30)
    assert postgres_db.password not in stderr
