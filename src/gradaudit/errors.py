"""User-facing errors.

Every error a user can cause by bad input (an unknown name, a missing data root, a malformed observation, a
bad config value) is a :class:`GradauditError`. The CLI turns these into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GradauditError(Exception):
    """Base class of errors caused by the user's input, reported without a traceback."""


class ConfigError(GradauditError, ValueError):
    """A configuration value, key or name is invalid."""


class DataNotFoundError(GradauditError, FileNotFoundError):
    """A dataset's files are not where we looked."""


class ObservationError(GradauditError, ValueError):
    """An observation (captured update) is malformed or does not fit the model."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest valid choice, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """Build the error for an unknown registry name, listing the valid ones."""
    choices = sorted(choices)
    return ConfigError(f"unknown {kind} '{name}'{suggest(name, choices)}; valid: {', '.join(choices)}")
