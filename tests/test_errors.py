"""Bad input as a user meets it: the real CLI in a subprocess, one case per row.

Each case checks the exit code (2 for a bad command line, 1 otherwise), the message (one
line on stderr that names the file, key and value), that no traceback is printed, and that
nothing on disk changed: no file appears or goes, and an existing database keeps its
SHA-256. Every case fails before a worker starts, and before TensorFlow loads: the
subprocesses find a ``tensorflow`` that exits when imported.

Trials that break while training are at the end: their objective runs in this process.
End to end, tests/test_run.py runs a worker whose diverging trials fail while the others
complete (``test_a_diverging_trial_fails_alone_and_the_worker_goes_on``) and one that stops
after ``max_consecutive_failures`` failures in a row
(``test_every_trial_failing_stops_the_worker_with_a_message``).
"""

from __future__ import annotations

import gc
import math
import sqlite3
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
import tomli_w
from optuna.trial import TrialState

from tests.postgres import PostgresDatabase
from tests.support import run_cli, sha256, tiny_study
from tuner.config import load_study_config
from tuner.launcher import initialize

pytestmark = pytest.mark.slow

TF_IMPORTED = "tuner test: TensorFlow was imported"
SECRET = "s3cretpw"


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        setup: Writes the files in the test's folder: tiny.toml and data.csv at least.
        args: The command line; ``{tmp}`` is the test's folder.
        says: What the message must contain.
        code: The exit code.
        database: A database file whose bytes must not change.
        hidden: What the output must not contain.
        env: Extra environment, ``{tmp}`` expanded.
    """

    setup: Callable[[Path], None]
    args: tuple[str, ...]
    says: tuple[str, ...]
    code: int = 1
    database: str | None = None
    hidden: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


# Setups.


def _tiny(tmp: Path) -> None:
    tiny_study(tmp)


def _tuner_db(tmp: Path) -> None:
    """The tiny study, created in tiny.db as `tuner init` would, and closed."""
    study_file, _ = tiny_study(tmp)
    initialize(load_study_config(study_file, environ={}))
    # All of it in tiny.db, none in the WAL, as after `tuner init` exits.
    gc.collect()
    connection = sqlite3.connect(tmp / "tiny.db")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def _bad_study(text: str | None = None, **changes: dict[str, Any]) -> Callable[[Path], None]:
    """tiny.db, plus bad.toml: the tiny study with ``changes`` (or ``text``), same storage."""

    def setup(tmp: Path) -> None:
        _tuner_db(tmp)
        if text is not None:
            (tmp / "bad.toml").write_text(text)
            return
        document = tomllib.loads((tmp / "tiny.toml").read_text())
        for section, values in changes.items():
            document.setdefault(section, {}).update(values)
        (tmp / "bad.toml").write_text(tomli_w.dumps(document))

    return setup


def _with_data(**data: Any) -> Callable[[Path], None]:
    """The tiny study with other [data] settings; ``{tmp}`` in values is expanded."""

    def setup(tmp: Path) -> None:
        study_file, _ = tiny_study(tmp)
        document = tomllib.loads(study_file.read_text())
        document["data"] = {k: str(v).format(tmp=tmp) for k, v in data.items()}
        study_file.write_text(tomli_w.dumps(document))

    return setup


def _csv(text: str, **data: Any) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _with_data(source="{tmp}/bad.csv", target="target", **data)(tmp)
        (tmp / "bad.csv").write_text(text)

    return setup


def _rows(count: int, bad: Callable[[int], str] = str) -> str:
    """A CSV of a, b, target where column b of each row is ``bad(row)``."""
    return "a,b,target\n" + "".join(f"{i},{bad(i)},{i % 7}\n" for i in range(count))


def _file(name: str, content: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        tiny_study(tmp)
        (tmp / name).write_bytes(content)

    return setup


def _other_tables(tmp: Path) -> None:
    tiny_study(tmp)
    connection = sqlite3.connect(tmp / "shop.db")
    with connection:
        connection.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
        connection.execute("INSERT INTO customers VALUES (1, 'Ada')")
    connection.close()


def _old_schema(tmp: Path) -> None:
    """A study made by plain Optuna, its schema marked as an older Optuna's."""
    tiny_study(tmp)
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp / 'old.db'}")
    connection = sqlite3.connect(tmp / "old.db")
    with connection:
        connection.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    connection.close()


def _california(tmp: Path) -> None:
    (tmp / "empty_data_home").mkdir()
    study = {"study": {"name": "cal"}, "train": {"epochs": 1}}
    (tmp / "tiny.toml").write_text(tomli_w.dumps(study))


RUN = ("run", "{tmp}/tiny.toml")
RUN_BAD = ("run", "{tmp}/bad.toml")
BEST = ("best", "{tmp}/tiny.toml")
UNREACHABLE = f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/db"

CASES = [
    # The study file. The storage is an existing database, which must stay as it was.
    pytest.param(
        Case(
            _bad_study(text="[study\nname = 'tiny'\n"),
            RUN_BAD,
            ("bad.toml", "invalid TOML", "line 1"),
            database="tiny.db",
        ),
        id="study-invalid-toml",
    ),
    pytest.param(
        Case(
            _bad_study(sampling={"kind": "tpe"}),
            RUN_BAD,
            ("bad.toml", "unknown section 'sampling'", "[study]"),
            database="tiny.db",
        ),
        id="study-unknown-section",
    ),
    pytest.param(
        Case(
            _bad_study(study={"n_trails": 5}),
            RUN_BAD,
            ("bad.toml", "'n_trails'", "[study]", "n_trials"),
            database="tiny.db",
        ),
        id="study-unknown-key",
    ),
    pytest.param(
        Case(
            _bad_study(study={"n_trials": "ten"}),
            RUN_BAD,
            ("bad.toml", "n_trials", "'ten'", "integer"),
            database="tiny.db",
        ),
        id="study-wrong-type",
    ),
    pytest.param(
        Case(
            _bad_study(space={"n_neurons": {"low": 16, "high": 4}}),
            RUN_BAD,
            ("bad.toml", "n_neurons", "low = 16", "high = 4"),
            database="tiny.db",
        ),
        id="study-low-above-high",
    ),
    pytest.param(
        Case(
            _bad_study(space={"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}),
            RUN_BAD,
            ("bad.toml", "learning_rate.low", "log = true", "0.0"),
            database="tiny.db",
        ),
        id="study-log-with-low-zero",
    ),
    pytest.param(
        Case(
            _bad_study(space={"activation": {"choices": []}}),
            RUN_BAD,
            ("bad.toml", "activation", "choices = []"),
            database="tiny.db",
        ),
        id="study-empty-choices",
    ),
    pytest.param(
        Case(
            _bad_study(space={"activation": "relux"}),
            RUN_BAD,
            ("bad.toml", "activation", "'relux'", "relu"),
            database="tiny.db",
        ),
        id="study-unknown-activation",
    ),
    pytest.param(
        Case(
            _bad_study(study={"sampler": "grid"}),
            RUN_BAD,
            ("bad.toml", "sampler", "'grid'", "tpe"),
            database="tiny.db",
        ),
        id="study-unknown-sampler",
    ),
    pytest.param(
        Case(
            _bad_study(study={"pruner": "asha"}),
            RUN_BAD,
            ("bad.toml", "pruner", "'asha'", "median"),
            database="tiny.db",
        ),
        id="study-unknown-pruner",
    ),
    pytest.param(
        Case(
            _bad_study(study={"n_trials": 0}),
            RUN_BAD,
            ("bad.toml", "n_trials", "n_trials = 0"),
            database="tiny.db",
        ),
        id="study-n-trials-zero",
    ),
    pytest.param(
        Case(
            _bad_study(train={"epochs": 0}),
            RUN_BAD,
            ("bad.toml", "epochs", "epochs = 0"),
            database="tiny.db",
        ),
        id="study-epochs-zero",
    ),
    pytest.param(
        Case(_tiny, ("run", "{tmp}/nowhere.toml"), ("nowhere.toml", "does not exist")),
        id="study-file-missing",
    ),
    pytest.param(
        Case(
            _bad_study(space={"n_hidden": {"low": 1, "high": 5}}),
            RUN_BAD,
            ("bad.toml", "'tiny'", "[space] n_hidden was 1..2, now 1..5", "--study-name"),
            database="tiny.db",
        ),
        id="study-resumed-with-other-settings",
    ),
    # The storage.
    pytest.param(
        Case(_tiny, (*RUN, "--storage", "sqlite//tiny.db"), ("'sqlite//tiny.db'", "malformed")),
        id="storage-malformed-url",
    ),
    pytest.param(
        Case(_tiny, (*RUN, "--storage", "foo://x"), ("'foo://x'", "unknown database 'foo'")),
        id="storage-unknown-driver",
    ),
    pytest.param(
        Case(
            _tiny,
            (*RUN, "--storage", UNREACHABLE),
            ("postgresql+psycopg://user:***@127.0.0.1:1/db", "Connection refused"),
            hidden=(SECRET,),
        ),
        id="storage-unreachable",
    ),
    pytest.param(
        Case(
            _tiny,
            (*BEST, "--storage", UNREACHABLE),
            ("postgresql+psycopg://user:***@127.0.0.1:1/db", "Connection refused"),
            hidden=(SECRET,),
        ),
        id="storage-unreachable-best",
    ),
    pytest.param(
        Case(
            _tiny,
            (*RUN, "--storage", "sqlite:///{tmp}/no/such/folder/tiny.db"),
            ("{tmp}/no/such/folder", "does not exist"),
        ),
        id="storage-folder-missing",
    ),
    pytest.param(
        Case(
            # Root may write anywhere os.access knows of, but no one creates files in /proc.
            _tiny,
            (*RUN, "--storage", "sqlite:////proc/tuner_test.db"),
            ("sqlite:////proc/tuner_test.db", "cannot create files in the folder /proc"),
        ),
        id="storage-folder-not-writable",
    ),
    pytest.param(
        Case(
            _file("junk.db", bytes(range(256)) * 16),
            (*RUN, "--storage", "sqlite:///{tmp}/junk.db"),
            ("{tmp}/junk.db", "not a SQLite database"),
            database="junk.db",
        ),
        id="storage-not-sqlite",
    ),
    pytest.param(
        Case(
            _file("notes.db", b"my shopping list\n"),
            (*BEST, "--storage", "sqlite:///{tmp}/notes.db"),
            ("{tmp}/notes.db", "not a SQLite database"),
            database="notes.db",
        ),
        id="storage-not-sqlite-best",
    ),
    pytest.param(
        Case(
            _old_schema,
            (*RUN, "--storage", "sqlite:///{tmp}/old.db"),
            ("older Optuna", "optuna storage upgrade --storage sqlite:///{tmp}/old.db"),
            database="old.db",
        ),
        id="storage-old-schema",
    ),
    pytest.param(
        Case(
            _old_schema,
            (*BEST, "--storage", "sqlite:///{tmp}/old.db"),
            ("older Optuna", "optuna storage upgrade"),
            database="old.db",
        ),
        id="storage-old-schema-best",
    ),
    pytest.param(
        Case(
            _other_tables,
            (*RUN, "--storage", "sqlite:///{tmp}/shop.db"),
            ("{tmp}/shop.db", "other tables", "not an Optuna study database"),
            database="shop.db",
        ),
        id="storage-other-tables",
    ),
    pytest.param(
        Case(
            _other_tables,
            (*BEST, "--storage", "sqlite:///{tmp}/shop.db"),
            ("{tmp}/shop.db", "other tables"),
            database="shop.db",
        ),
        id="storage-other-tables-best",
    ),
    pytest.param(
        Case(_tiny, BEST, ("{tmp}/tiny.db", "does not exist", "tuner run")),
        id="storage-missing-best",
    ),
    # The data: checked before the study is created, so no database appears.
    pytest.param(
        Case(
            _with_data(source="{tmp}/houses.csv", target="price"),
            RUN,
            ("{tmp}/houses.csv", "does not exist", "california_housing"),
        ),
        id="data-csv-missing",
    ),
    pytest.param(
        Case(
            _with_data(source="{tmp}/houses.csv", target="price"),
            ("worker", "{tmp}/tiny.toml"),
            ("{tmp}/houses.csv", "does not exist"),
        ),
        id="data-csv-missing-worker",
    ),
    pytest.param(
        Case(
            _with_data(source="{tmp}/data.csv", target="price"),
            RUN,
            ("'price'", "{tmp}/data.csv", "a, b, c, d, target"),
        ),
        id="data-target-missing",
    ),
    pytest.param(
        Case(
            _csv(_rows(40, lambda i: f"x{i}")),
            RUN,
            ("column 'b'", "bad.csv", "not numeric", "line 2", "'x0'"),
        ),
        id="data-not-numeric",
    ),
    pytest.param(
        Case(
            _csv(_rows(40, lambda i: "" if i == 5 else str(i))),
            RUN,
            ("column 'b'", "bad.csv", "1 missing value", "line 7"),
        ),
        id="data-missing-values",
    ),
    pytest.param(
        Case(_csv(_rows(3)), RUN, ("bad.csv", "3 row(s)", "too few", "at least 4")),
        id="data-too-few-rows",
    ),
    pytest.param(
        Case(
            _california,
            RUN,
            ("California housing", "not cached", "{tmp}/empty_data_home", "SCIKIT_LEARN_DATA"),
            env={"SCIKIT_LEARN_DATA": "{tmp}/empty_data_home"},
        ),
        id="data-california-offline",
        marks=pytest.mark.timeout(120),
    ),
    # The command line.
    pytest.param(
        Case(_tiny, (*RUN, "--frobnicate"), ("--frobnicate", "tuner --help"), code=2),
        id="cli-unknown-option",
    ),
    pytest.param(
        Case(_tiny, (*RUN, "--workers", "0"), ("--workers", "must be >= 1", "got 0"), code=2),
        id="cli-workers-zero",
    ),
    pytest.param(
        Case(_tiny, (*RUN, "--n-trials", "0"), ("--n-trials", "must be >= 1", "got 0"), code=2),
        id="cli-n-trials-zero",
    ),
    pytest.param(
        Case(
            _tuner_db,
            (*BEST, "--study-name", "tiney"),
            ("no study named 'tiney'", "{tmp}/tiny.db", "it has: tiny"),
            database="tiny.db",
        ),
        id="cli-unknown-study-name",
    ),
]


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``tensorflow`` package exits when imported, to put first on the path."""
    folder = tmp_path_factory.mktemp("no_tensorflow")
    (folder / "tensorflow").mkdir()
    (folder / "tensorflow" / "__init__.py").write_text(f"raise SystemExit({TF_IMPORTED!r})\n")
    return folder


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_changes_nothing(
    case: Case, tmp_path: Path, no_tensorflow: Path
) -> None:
    def expand(text: str) -> str:
        return text.format(tmp=tmp_path)

    case.setup(tmp_path)
    files = _files(tmp_path)
    database = tmp_path / case.database if case.database else None
    before = sha256(database) if database else None
    env = {k: expand(v) for k, v in case.env.items()}
    env["PYTHONPATH"] = str(no_tensorflow)

    result = run_cli(*map(expand, case.args), env=env, timeout=120)

    output = result.stdout + result.stderr
    assert TF_IMPORTED not in output
    assert "Traceback" not in output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tuner: error: ")
    for fragment in map(expand, case.says):
        assert fragment in lines[0]
    for secret in case.hidden:
        assert secret not in output
    assert result.returncode == case.code
    assert result.stdout == ""
    if database is not None:
        assert sha256(database) == before
    assert _files(tmp_path) == files


@pytest.mark.postgres
def test_a_wrong_password_is_refused_without_echoing_it(
    postgres_db: PostgresDatabase, tmp_path: Path
) -> None:
    study_file, _ = tiny_study(tmp_path)
    wrong = "wrong" + postgres_db.password[::-1]
    url = postgres_db.server.url(postgres_db.name, password=wrong)

    for command in ("run", "best"):
        result = run_cli(command, str(study_file), "--storage", url, timeout=120)

        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("tuner: error: ")
        assert "password authentication failed" in lines[0]
        assert postgres_db.server.url(postgres_db.name, password="***") in lines[0]
        assert wrong not in result.stderr and postgres_db.password not in result.stderr
        assert "Traceback" not in result.stderr
        assert result.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "tiny.toml"]


# Trials that break while training. The objective is the worker's, run as the worker runs
# it (study.optimize catching every exception), on a tiny CSV study.


@pytest.fixture
def objective_study(tmp_path: Path) -> Iterator[Callable[..., optuna.Study]]:
    from tuner.data import load_dataset
    from tuner.objective import Objective

    def run(n_trials: int, learning_rates: list[float], **objective: Any) -> optuna.Study:
        study_file, _ = tiny_study(
            tmp_path,
            epochs=2,
            train={"schedule": "constant"},
            space={
                "learning_rate": {"choices": learning_rates},
                "n_hidden": 1,
                "n_neurons": 8,
                "batch_size": 64,
                "activation": "relu",
            },
        )
        config = load_study_config(study_file, environ={})
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        # Each LR in turn, so that every kind of trial runs.
        for i in range(n_trials):
            study.enqueue_trial({"learning_rate": learning_rates[i % len(learning_rates)]})
        study.optimize(
            Objective(config, load_dataset(config.data), **objective),
            n_trials=n_trials,
            catch=(Exception,),
        )
        return study

    yield run


def test_a_diverging_lr_fails_its_trial_and_the_best_value_stays_finite(
    objective_study: Callable[..., optuna.Study],
) -> None:
    # SGD at a constant LR of 1e4 overflows to inf or NaN within the first epoch.
    study = objective_study(4, [1e4, 0.01])

    diverged = [t for t in study.trials if t.params["learning_rate"] == 1e4]
    trained = [t for t in study.trials if t.params["learning_rate"] == 0.01]
    assert [t.state for t in diverged] == [TrialState.FAIL] * 2
    assert all("TrainingDivergedError" in t.user_attrs["error"] for t in diverged)
    assert [t.state for t in trained] == [TrialState.COMPLETE] * 2
    assert all(math.isfinite(t.value) for t in trained)
    assert math.isfinite(study.best_value)
    assert study.best_trial.params["learning_rate"] == 0.01


def test_an_exception_in_a_trial_fails_it_with_the_error_kept_and_the_next_runs(
    objective_study: Callable[..., optuna.Study],
) -> None:
    def after_training(trial: optuna.Trial, trained: object) -> None:
        if trial.number == 1:
            raise OSError("disk full while saving the curve")

    study = objective_study(3, [0.01], after_training=after_training)

    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert study.trials[1].user_attrs["error"] == "OSError: disk full while saving the curve"
    assert math.isfinite(study.best_value)
