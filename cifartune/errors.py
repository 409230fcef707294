"""User-facing errors: the CLI prints their message (exit 2) instead of a traceback; and the
exit status of a run stopped by a signal, which the CLI and the study driver both use."""

from __future__ import annotations

# 128 + SIGINT, as a shell reports Ctrl-C: whatever stopped it (SIGINT, SIGTERM, SIGHUP).
EXIT_INTERRUPTED = 130


class CifartuneError(Exception):
    """Bad input from the user; the message names what is wrong and how to fix it."""


class ConfigError(CifartuneError, ValueError):
    """A configuration or spec that cannot run."""


class DataError(CifartuneError, RuntimeError):
    """Data that cannot be used; the message names the path and what was expected."""


class StudyDirError(CifartuneError, ValueError):
    """A path that is not a cifartune study results directory."""
