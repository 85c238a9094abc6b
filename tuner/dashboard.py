"""``tuner dashboard``: optuna-dashboard on a study's database and trial artifacts.

The dashboard reads the database while workers write to it, so a study can be watched live:
trials as they finish, each trial's learning curves, LR schedule and range test (see
:mod:`tuner.artifacts`), and the study's settings as its note. It has no authentication and
its pages can delete studies, so it listens on 127.0.0.1 unless told otherwise.

It opens the database without creating anything: a SQLite file that does not exist yet is
an error that says to run ``tuner init`` or ``tuner run`` first.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.artifacts import artifact_store
from tuner.config import StudyConfig
from tuner.errors import TunerError
from tuner.storage import Access, describe_url, open_storage, storage_errors

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard", "save_settings_note", "settings_note"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

_logger = logging.getLogger(__name__)


class Dashboard:
    """optuna-dashboard for one study file's storage, bound to its port but not serving yet.

    Args:
        config: The study configuration: its storage and artifact folder.
        host: The address to listen on. Defaults to 127.0.0.1, this machine only.
        port: The port; 0 picks a free one. Defaults to 8080.

    Raises:
        StorageError: The database does not exist or cannot be read.
        TunerError: The address cannot be listened on, e.g. the port is taken.
    """

    def __init__(
        self, config: StudyConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
    ) -> None:
        self.config = config
        url = config.study.storage
        storage = open_storage(url, Access.READ)
        with storage_errors(url):
            self.study_id = _study_id(storage, config.study.name)
        app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store(config))
        server_class = _IPv6Server if ":" in host else _Server
        try:
            self._server = make_server(
                host, port, app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as e:
            raise TunerError(
                f"cannot listen on {host}:{port}: {e.strerror or e}; "
                f"choose another --port or --host."
            ) from None
        except UnicodeError:
            raise TunerError(f"cannot listen on {host!r}: not a host name.") from None
        self.host = host
        self.port = int(self._server.server_address[1])
        _logger.info("Dashboard on %s, artifacts in %s.", describe_url(url), config.artifact_dir)

    @property
    def url(self) -> str:
        """The dashboard's address, as a browser on this machine opens it."""
        host = self.host
        if self.listens_everywhere:
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/dashboard"

    @property
    def study_url(self) -> str | None:
        """The study's page, or None if the study does not exist yet."""
        return f"{self.url}/studies/{self.study_id}" if self.study_id is not None else None

    @property
    def listens_everywhere(self) -> bool:
        """Whether other machines can reach it (any address but loopback)."""
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True  # A host name: it may well resolve to a public address.

    def serve_forever(self) -> None:
        """Serves requests until interrupted (Ctrl-C raises ``KeyboardInterrupt``)."""
        self._server.serve_forever()

    def close(self) -> None:
        """Stops listening."""
        self._server.server_close()


def _study_id(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request: the dashboard's page loads several at once."""

    daemon_threads = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Logs requests at debug level instead of a line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s %s", self.address_string(), format % args)


def settings_note(config: StudyConfig) -> str:
    """The study's settings as Markdown, for its note in the dashboard."""
    study, train, data = config.study, config.train, config.data
    lines = [
        f"## {study.name}",
        "",
        f"Created by tuner from `{config.path}`. Minimizes the validation MSE.",
        "",
        f"- sampler: {study.sampler}, pruner: {study.pruner}, seed: {study.seed}",
        f"- budget when created: {study.n_trials} trials",
        f"- data: {data.source}"
        + (f" (target `{data.target}`)" if data.target else "")
        + f", test {data.test_size:g}, validation {data.valid_size:g} of the rest",
        f"- training: up to {train.epochs} epochs, {train.schedule} schedule, early stopping "
        f"after {train.early_stopping_patience} epochs without progress"
        + (f", LR finder ({train.lr_suggestion})" if train.lr_finder else ""),
        "",
        "| hyperparameter | searched over |",
        "|---|---|",
    ]
    lines.extend(f"| {name} | {_describe(d)} |" for name, d in config.space.items())
    lines += [
        "",
        "Each finished trial has its learning curves, LR schedule and (with the LR finder) "
        "range test among its artifacts.",
    ]
    return "\n".join(lines) + "\n"


def _describe(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        choices = [f"`{c}`" for c in distribution.choices]
        return choices[0] + " (fixed)" if len(choices) == 1 else ", ".join(choices)
    if isinstance(distribution, FloatDistribution | IntDistribution):
        scale = ", log scale" if distribution.log else ""
        step = f", step {distribution.step}" if distribution.step not in (None, 1) else ""
        return f"{distribution.low} to {distribution.high}{scale}{step}"
    return repr(distribution)


def save_settings_note(study: optuna.Study, config: StudyConfig) -> None:
    """Writes :func:`settings_note` as the study's note in the dashboard."""
    optuna_dashboard.save_note(study, settings_note(config))
