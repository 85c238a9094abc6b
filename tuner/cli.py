"""The ``tuner`` command line. The only module that prints for people.

Every user error ends as one line on stderr, ``tuner: error: ...``, and a non-zero exit
code: 2 for a bad command line, 1 for anything else the user can fix, 130 or 143 when
interrupted. Heavy modules (TensorFlow) load only in the commands that train, so errors in
a study file show at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tuner.config import Overrides, StudyConfig, load_study_config
from tuner.errors import TunerError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = ["main"]

DEFAULT_STUDY_FILE = Path("studies/california.toml")

_logger = logging.getLogger("tuner")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tuner: error: {message} (see 'tuner --help')\n")


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, but got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, but got {value}")
        return value

    return parse


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="tuner",
        description="Tune Keras regression models with Optuna; many workers, one study database.",
    )
    parser.add_argument("--version", action="version", version=f"tuner {_version()}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="how much to log on stderr (default: info)",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, budget: bool = False
    ) -> _Parser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "study_file",
            nargs="?",
            type=Path,
            default=DEFAULT_STUDY_FILE,
            metavar="STUDY_FILE",
            help=f"the study file (default: {DEFAULT_STUDY_FILE})",
        )
        sub.add_argument(
            "--storage",
            metavar="URL",
            help="database URL; overrides TUNER_STORAGE and the study file",
        )
        sub.add_argument("--study-name", metavar="NAME", help="overrides [study] name")
        if budget:
            sub.add_argument(
                "--n-trials",
                type=_at_least(1),
                metavar="N",
                help="overrides [study] n_trials, the total across workers",
            )
        sub.set_defaults(handler=handler)
        return sub

    run = command(
        "run", _run, "Create or resume the study and run workers until it is done.", budget=True
    )
    run.add_argument(
        "--workers",
        type=_at_least(1),
        metavar="N",
        help="worker processes on this machine (default: one per core)",
    )
    worker = command(
        "worker", _worker, "Run one worker: pull trials until the budget is met.", budget=True
    )
    worker.add_argument(
        "--worker-index",
        type=_at_least(0),
        metavar="I",
        help="distinguishes this worker's sampler seed (default: random)",
    )
    worker.add_argument(
        "--threads", type=_at_least(1), metavar="N", help="TensorFlow threads (default: all cores)"
    )
    command(
        "init",
        _init,
        "Create the database schema and the study, before workers start.",
        budget=True,
    )
    best = command("best", _best, "Show the best trial.")
    best.add_argument("--json", action="store_true", help="print JSON")
    train_best = command(
        "train-best",
        _train_best,
        "Train the best hyperparameters, score on the test set, save .keras.",
    )
    train_best.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="where to save the model (default: beside the study database)",
    )
    lr_find = command("lr-find", _lr_find, "Run the LR range test; write its figure.")
    lr_find.add_argument("--output", type=Path, metavar="PATH", help="the figure's HTML file")
    compare = command("compare", _compare, "Compare a fixed LR with 1-Cycle on the best trial.")
    compare.add_argument("--output", type=Path, metavar="PATH", help="the figure's HTML file")
    report = command("report", _report, "Write one HTML file of the study's figures.")
    report.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="the report's HTML file (default: beside the study database)",
    )
    dashboard = command(
        "dashboard", _dashboard, "Serve optuna-dashboard on the study's database and artifacts."
    )
    dashboard.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only: the dashboard has "
        "no authentication and can delete studies)",
    )
    dashboard.add_argument(
        "--port", type=_port, default=8080, help="port (default: 8080; 0 picks a free one)"
    )
    return parser


def _port(text: str) -> int:
    port = _at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number up to 65535, but got {port}")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code."""
    args = _build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return int(args.handler(args))
    except TunerError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        from tuner import interrupts

        signum = interrupts.received_signal() or signal.SIGINT
        return 128 + int(signum)


def _fail(message: str, code: int = 1) -> int:
    print(f"tuner: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    # Optuna's per-trial INFO lines duplicate ours and cost a best-trial query each.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # tuner relies on Optuna's heartbeat API knowingly; its "experimental" notice is noise.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if level != "debug":
        # The worker logs one line per failed trial; Optuna's adds a traceback to it.
        logging.getLogger("optuna.study._optimize").addFilter(_drop_failed_trial_tracebacks)
        # Its "Downloading ..." line would precede a download error's own message.
        logging.getLogger("sklearn").setLevel(logging.WARNING)
        # Alembic, which Optuna uses for its schema, logs each plugin it loads.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _drop_failed_trial_tracebacks(record: logging.LogRecord) -> bool:
    return not (record.getMessage().startswith("Trial ") and " failed" in record.getMessage())


def _config(args: argparse.Namespace) -> StudyConfig:
    return load_study_config(
        args.study_file,
        Overrides(
            storage=args.storage,
            study_name=args.study_name,
            n_trials=getattr(args, "n_trials", None),
        ),
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tuner")
    except PackageNotFoundError:
        return "unknown"


# Commands.


def _init(args: argparse.Namespace) -> int:
    from tuner.launcher import initialize
    from tuner.storage import describe_url

    config = _config(args)
    initialize(config)
    print(f"Study '{config.study.name}' is ready in {describe_url(config.study.storage)}.")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    from tuner import launcher
    from tuner.progress import TrialProgress
    from tuner.storage import Access, check_storage

    check_storage(config.study.storage, Access.WRITE)  # at once, before loading the data
    from tuner.data import load_dataset

    # Here, not in each worker: bad data is one message, and no study is created for it.
    load_dataset(config.data)
    launcher.initialize(config)
    workers = args.workers or launcher.default_workers(config.study.n_trials)
    print(
        f"Running study '{config.study.name}' ({config.study.n_trials} trials, "
        f"{config.study.sampler} sampler) with {workers} worker(s).",
        file=sys.stderr,
    )
    display = TrialProgress()
    try:
        result = launcher.run(
            config,
            args.study_file,
            workers=workers,
            on_progress=display.update,
            worker_log_level="warning" if args.log_level in ("info", "debug") else args.log_level,
        )
    finally:
        display.close()
    if result.interrupted:
        print(
            "tuner: interrupted; running trials were queued again. Run the same command to resume.",
            file=sys.stderr,
        )
        return 130
    _print_best(config)
    if result.failed_workers:
        return _fail(
            f"worker(s) {', '.join(map(str, result.failed_workers))} exited with an "
            f"error; see their messages above."
        )
    return 0


def _worker(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from tuner.worker import configure_threads, run_worker

    if args.threads:
        configure_threads(args.threads)
    report = run_worker(config, worker_index=args.worker_index)
    _logger.info("Worker finished %d trial(s): %s", report.trials, report.states)
    return 0


def _best(args: argparse.Namespace) -> int:
    config = _config(args)
    study = _existing_study(config)
    from tuner.study import best_trial

    trial = best_trial(study)
    if args.json:
        print(
            json.dumps(
                {
                    "study": study.study_name,
                    "number": trial.number,
                    "value": trial.value,
                    "params": trial.params,
                    "user_attrs": trial.user_attrs,
                    "datetime_complete": trial.datetime_complete.isoformat()
                    if trial.datetime_complete
                    else None,
                },
                indent=2,
            )
        )
        return 0
    _print_trial(config, trial)
    return 0


def _train_best(args: argparse.Namespace) -> int:
    from tuner.data import load_dataset
    from tuner.final import train_best
    from tuner.progress import EpochProgress, Steps, epoch_callback

    config = _config(args)
    study = _existing_study(config, write=True)
    output = args.output or _beside_database(config, ".keras")
    steps = Steps()
    with steps.step("Loading data"):
        data = load_dataset(config.data)
    with steps.step(
        f"Training the best trial's hyperparameters ({config.train.epochs} epochs max)",
        shows_progress=True,
    ):
        progress = epoch_callback(EpochProgress(config.train.epochs))
        final = train_best(study, config, data, output, callbacks=[progress])
    print(f"Final model from trial {final.trial_number}, {final.epochs} epochs:")
    print(f"  test MSE        {final.test_mse:.4f}")
    print(f"  test MAE        {final.test_mae:.4f}")
    print(f"  validation MSE  {final.val_mse:.4f}")
    print(f"Saved to {final.path} (it takes raw, unscaled features).")
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    from tuner.data import load_dataset
    from tuner.figures import lr_finder_figure, write_html
    from tuner.final import LR_FIND_ATTR, find_lr, lr_find_params
    from tuner.lr_finder import RangeTestResult
    from tuner.progress import Steps

    config = _config(args)
    study = _existing_study(config, write=True, required=False)
    params = lr_find_params(study, config)
    steps = Steps()
    with steps.step("Loading data"):
        data = load_dataset(config.data)
    with steps.step("Running the LR range test"):
        result = find_lr(config, data, params, seed=config.study.seed)
    suggestions = _suggestions(result)
    output = args.output or _beside_database(config, "_lr_find.html")
    write_html(lr_finder_figure(result, suggestions), output)
    if study is not None:
        study.set_user_attr(
            LR_FIND_ATTR,
            {
                "params": params,
                "lrs": result.lrs.tolist(),
                "losses": result.losses.tolist(),
                "suggestions": suggestions,
            },
        )
    described = ", ".join(f"{k}={v}" for k, v in params.items())
    print(f"Range test of {described}: {len(result.lrs)} steps up to LR {result.lrs[-1]:.3g}.")
    for rule, lr in suggestions.items():
        marker = "  (suggested)" if rule == config.train.lr_suggestion else ""
        print(f"  {rule:<11} {lr:.3g}{marker}")
    print(f"The rules span {RangeTestResult.spread(suggestions):.2f} decades.")
    print(f"Figure: {output}")
    return 0


def _suggestions(result: Any) -> dict[str, float]:
    from tuner.lr_suggestion import RULES

    found = {}
    for rule in RULES:
        try:
            found[rule] = result.suggest(rule)
        except ValueError as e:
            raise TunerError(f"the range test's curve is too short to suggest an LR: {e}") from None
    return found


def _compare(args: argparse.Namespace) -> int:
    from tuner.data import load_dataset
    from tuner.figures import schedule_comparison_figure, write_html
    from tuner.final import compare_schedules
    from tuner.progress import EpochProgress, Steps, epoch_callback

    config = _config(args)
    study = _existing_study(config, write=True)
    steps = Steps()
    with steps.step("Loading data"):
        data = load_dataset(config.data)
    with steps.step(
        "Training with a fixed LR (run 1) and with 1-Cycle (run 2)", shows_progress=True
    ):
        progress = epoch_callback(EpochProgress(config.train.epochs, runs=2))
        comparison = compare_schedules(study, config, data, callbacks=[progress])
    output = args.output or _beside_database(config, "_compare.html")
    figure = schedule_comparison_figure(
        comparison.fixed_val_loss, comparison.one_cycle_val_loss, comparison.learning_rate
    )
    write_html(figure, output)
    print(f"Same hyperparameters, LR {comparison.learning_rate:.3g}:")
    for name, mse, diverged in (
        ("fixed LR", comparison.fixed_test_mse, comparison.fixed_diverged),
        ("1-Cycle ", comparison.one_cycle_test_mse, comparison.one_cycle_diverged),
    ):
        print(f"  {name}  diverged: {diverged}" if mse is None else f"  {name}  test MSE {mse:.4f}")
    improvement = comparison.improvement_percent
    if improvement is not None:
        better = "lower" if improvement >= 0 else "higher"
        print(f"1-Cycle's test MSE is {abs(improvement):.1f}% {better}.")
    elif comparison.one_cycle_test_mse is not None:
        print("1-Cycle trained at a peak LR that diverges as a fixed LR.")
    print(f"Figure: {output}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tuner import report
    from tuner.progress import Steps

    config = _config(args)
    steps = Steps()
    with steps.step("Reading the study"):
        study = _existing_study(config)
    sections = report.build_sections(study, config, step=steps.step)
    output = args.output or _beside_database(config, "_report.html")
    with steps.step(f"Writing {output}"):
        report.write_report(study, config, output, sections)
    try:
        with steps.step("Saving tuner's figures to the study, for the dashboard"):
            saved = report.save_to_dashboard(study, config, sections)
    except TunerError as e:
        # The report is written; a read-only database only costs the dashboard its copies.
        print(f"tuner: warning: the figures were not saved to the study: {e}", file=sys.stderr)
        saved = []
    drawn = sum(1 for s in sections if s.figure is not None)
    print(f"Report with {drawn} of {len(sections)} figures: {output}")
    for section in sections:
        if section.figure is None:
            print(f"  {section.title}: {section.note}")
    if saved:
        print(f"The dashboard shows {len(saved)} of them on the study's page.")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    config = _config(args)
    from tuner.dashboard import Dashboard
    from tuner.storage import describe_url

    dashboard = Dashboard(config, host=args.host, port=args.port)
    try:
        print(
            f"optuna-dashboard on {describe_url(config.study.storage)} "
            f"(artifacts in {config.artifact_dir})",
            file=sys.stderr,
        )
        if dashboard.listens_everywhere:
            print(
                f"tuner: warning: listening on {args.host}, reachable from other machines; the "
                f"dashboard has no authentication and can delete studies.",
                file=sys.stderr,
            )
        if dashboard.study_url is None:
            print(
                f"Study '{config.study.name}' does not exist yet; it appears once "
                f"'tuner run' or 'tuner init' creates it.",
                file=sys.stderr,
            )
        print(f"Open {dashboard.study_url or dashboard.url}", flush=True)
        print("Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        dashboard.serve_forever()
    except KeyboardInterrupt:
        print("Dashboard stopped.", file=sys.stderr)
    finally:
        dashboard.close()
    return 0


# Helpers.


def _existing_study(config: StudyConfig, write: bool = False, required: bool = True) -> Any:
    from tuner.storage import Access, open_storage
    from tuner.study import load_existing_study

    access = Access.WRITE if write else Access.READ
    if not required:
        from tuner.storage import sqlite_path

        path = sqlite_path(config.study.storage)
        if path is not None and not path.exists():
            return None
    storage = open_storage(config.study.storage, access)
    try:
        return load_existing_study(storage, config)
    except TunerError:
        if required:
            raise
        return None


def _beside_database(config: StudyConfig, suffix: str) -> Path:
    folder = config.artifact_dir.parent
    return folder / f"{config.study.name}{suffix}"


def _print_best(config: StudyConfig) -> None:
    from tuner.study import best_trial

    study = _existing_study(config)
    try:
        trial = best_trial(study)
    except TunerError as e:
        print(f"No best trial: {e}", file=sys.stderr)
        return
    _print_trial(config, trial)


def _print_trial(config: StudyConfig, trial: FrozenTrial) -> None:
    value, params, attrs = trial.value, trial.params, trial.user_attrs
    shown = "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
    print(f"Best trial {trial.number}: validation MSE {shown}")
    ordered = [n for n in config.space if n in params] + [
        n for n in params if n not in config.space
    ]
    for name in ordered:
        param = params[name]
        print(f"  {name:<14} {param:.4g}" if isinstance(param, float) else f"  {name:<14} {param}")
    if "val_mae" in attrs:
        print(f"  {'(val MAE)':<14} {attrs['val_mae']:.4f}")
    if "epochs_trained" in attrs:
        print(f"  {'(epochs)':<14} {attrs['epochs_trained']}")
