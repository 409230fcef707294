"""What the commands share: each command's name, summary, arguments and code
(:class:`Command`, defined beside the command's code), and the options several take."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Command:
    """A ``cifartune`` subcommand: its arguments are added by `arguments`, and `run` runs it
    on the parsed arguments, returning the exit status."""

    name: str
    summary: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


MIRROR_HELP = (
    "Optuna storage URL (sqlite:///x.db, ...) or journal file (default: the one the study ran "
    "with, else RESULTS_DIR/optuna.journal)"
)


def overrides_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable), into ``args.overrides``; `help` says which keys."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def trial_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="trial config YAML (defaults otherwise)")
    overrides_arg(parser, "override a config key, e.g. --set optim.lr=0.01 (repeatable)")


def optuna_storage_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="Optuna storage the study is mirrored into as it runs (sqlite:///x.db, "
        "postgresql://...; default: optuna.journal in the results directory)",
    )


class _StorageIsTheResultsRoot(argparse.Action):
    """``--storage`` is where results go (run, submit) everywhere; a command that reads an
    Optuna storage takes ``--optuna-storage``, and says so to whoever passes ``--storage``."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            "--storage is where a study's results go (run, submit); an Optuna storage is "
            "--optuna-storage URL"
        )


def results_root_refused(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", action=_StorageIsTheResultsRoot, help=argparse.SUPPRESS)
