"""PostgreSQL through the real CLI: the study created once, passwords kept out of every message."""

from __future__ import annotations

import secrets
import urllib.parse
from pathlib import Path

import optuna
import pytest

from tests import postgres
from tests.postgres import USER, PostgresDatabase, PostgresServer, _free_port
from tests.support import run_cli, tiny_study


def _study(tmp_path: Path) -> Path:
    # The storage comes from the environment, as on a worker host: the file names SQLite.
    study_file, _ = tiny_study(tmp_path, n_trials=4, epochs=1)
    return study_file


@pytest.mark.postgres
def test_init_creates_the_study_once_and_refuses_a_changed_search(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    study_file = _study(tmp_path)
    env = {"TUNER_STORAGE": postgres_db.url}
    first = run_cli("init", str(study_file), env=env)
    assert first.returncode == 0, first.stderr
    assert f"postgresql+psycopg://{USER}:***@127.0.0.1" in first.stdout
    assert postgres_db.password not in first.stdout + first.stderr
    again = run_cli("init", str(study_file), env=env)
    assert again.returncode == 0, again.stderr
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_db.url)] == ["tiny"]

    text = study_file.read_text()
    text = text.replace('pruner = "none"', 'pruner = "none"\nsampler = "tpe"')
    text = text.replace("high = 16", "high = 32")
    study_file.write_text(text)
    for command in ("init", "worker"):
        refused = run_cli(command, str(study_file), env=env)
        assert refused.returncode == 1, refused.stderr
        [line] = refused.stderr.strip().splitlines()[-1:]
        assert line.startswith("tuner: error: ")
        assert "sampler was random, now tpe" in line
        assert "[space] n_neurons was 4..16, now 4..32" in line
        assert "Traceback" not in refused.stderr
    # Nothing ran: the refused worker started no trial.
    assert optuna.load_study(study_name="tiny", storage=postgres_db.url).trials == []


@pytest.mark.postgres
def test_the_password_can_come_from_pgpassword(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    study_file = _study(tmp_path)
    env = {"TUNER_STORAGE": postgres_db.url_without_password, "PGPASSWORD": postgres_db.password}
    result = run_cli("init", str(study_file), env=env)
    assert result.returncode == 0, result.stderr
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_db.url)] == ["tiny"]


def _wrong_password() -> str:
    # Characters that URLs must escape, so both spellings must stay hidden.
    return f"Wr0ng:p@ss/{secrets.token_hex(4)}"


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("command", "case"),
    [
        ("init", "wrong password in the URL"),
        ("init", "wrong PGPASSWORD"),
        ("init", "unreachable server"),
        ("init", "--storage"),
        ("worker", "wrong password in the URL"),
    ],
)
def test_no_password_appears_in_any_error(
    tmp_path: Path, postgres_server: PostgresServer, case: str, command: str
) -> None:
    study_file = _study(tmp_path)
    database = postgres_server.create_database().name
    secret = _wrong_password()
    quoted = urllib.parse.quote(secret, safe="")
    args: list[str] = []
    env: dict[str, str] = {}
    if case == "wrong password in the URL":
        env["TUNER_STORAGE"] = postgres_server.url(database, password=quoted)
    elif case == "wrong PGPASSWORD":
        env["TUNER_STORAGE"] = postgres_server.url(database, password="")
        env["PGPASSWORD"] = secret
    elif case == "unreachable server":
        secret, quoted = postgres_server.password, postgres_server.password
        env["TUNER_STORAGE"] = postgres_server.url(database, port=_free_port())
    else:
        args = ["--storage", postgres_server.url(database, password=quoted)]

    result = run_cli("--log-level", "debug", command, str(study_file), *args, env=env)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert secret not in output and quoted not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tuner: error: ")
    assert f"{USER}:***@127.0.0.1" in last or f"{USER}@127.0.0.1" in last
    expected = "Connection refused" if case == "unreachable server" else "password authentication"
    assert expected in last
    assert "Traceback" not in output


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_postgres_binaries_skip_the_tests_except_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setattr(postgres, "find_bin_dir", lambda: None)
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="no PostgreSQL server binaries"):
        postgres._new_server()
