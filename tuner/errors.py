"""The errors a user can fix.

Each is fatal for the command that meets it, and the CLI turns it into one line on stderr
and a non-zero exit code. Anything else that escapes is a bug in tuner.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "StorageError", "TunerError"]


class TunerError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class ConfigError(TunerError, ValueError):
    """A study file or a command-line option that is invalid."""


class DataError(TunerError):
    """Data that cannot be loaded or that cannot be trained on."""


class StorageError(TunerError):
    """A study database that cannot be opened, read or written."""
