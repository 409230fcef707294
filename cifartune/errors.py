"""User-facing errors: the CLI prints their message (exit 2) instead of a traceback."""

from __future__ import annotations


class CifartuneError(Exception):
    """Bad input from the user; the message names what is wrong and how to fix it."""


class ConfigError(CifartuneError, ValueError):
    """A configuration or spec that cannot run."""


class DataError(CifartuneError, RuntimeError):
    """Data that cannot be used; the message names the path and what was expected."""


class StudyDirError(CifartuneError, ValueError):
    """A path that is not a cifartune study results directory."""
