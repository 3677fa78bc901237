"""User-facing errors.

Every problem a user can fix (bad config, missing input, too many bad rows, a model that
would not fit in memory) is raised as :class:`MfsparkError` with a one-line message that
names the problem and the remedy. Jobs print that line and exit non-zero; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class MfsparkError(Exception):
    """A problem with the user's input, config or environment, explained in one line."""

    exit_code = 1


class ConfigError(MfsparkError):
    """An unknown config key or a value outside what the key allows."""

    exit_code = 2


class InputError(MfsparkError):
    """Missing, empty, unreadable or mostly invalid input data."""

    exit_code = 3
