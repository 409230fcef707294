"""The ``cifartune`` command line: its parser and the error handling every command shares. The
command modules print; library code logs.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from cifartune.cli.local import INSPECT, TRAIN, VALIDATE
from cifartune.cli.study import RESUME, RUN, SUBMIT
from cifartune.cli.views import DASHBOARD, EXPORT_OPTUNA, REPORT, STATUS
from cifartune.errors import CifartuneError

# In the order `cifartune --help` lists them.
COMMANDS = (TRAIN, INSPECT, VALIDATE, RUN, RESUME, STATUS, EXPORT_OPTUNA, DASHBOARD, SUBMIT, REPORT)
EXIT_USAGE = 2
EXIT_STORAGE = 74  # EX_IOERR
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a tool its reader left
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default where it has a meaningful one (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in text or not text:
            return text
        return f"{text} (default: {default})"


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks on errors"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="more log output (Ray's too)"
    )


def _command(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help describes it; --debug and -v work after its name too (their
    SUPPRESS default keeps the value given before the name)."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    return cast(
        argparse.ArgumentParser,
        sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            parents=[common],
            formatter_class=_HelpFormatter,
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifartune",
        description="Hyperparameter studies of CIFAR-10 classifiers on Ray Tune.",
        formatter_class=_HelpFormatter,
    )
    _global_options(parser, None)
    parser.set_defaults(debug=False, verbose=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        own = _command(sub, command.name, command.summary)
        command.arguments(own)
        own.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # What a supervised child reruns (see study.supervise).
    parser.set_defaults(argv=list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * args.verbose,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at exit
        return code
    except BrokenPipeError:
        # Whoever read the output went away (`cifartune status DIR | head -3`): stop quietly,
        # as a shell's tools do, with nothing more written to the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except OSError as exc:
        # A full disk or a lost mount: say which file and stop; finished work is already on disk
        # (every results file is replaced atomically, so none is left half-written).
        if args.debug or exc.errno not in STORAGE_ERRNOS:
            raise
        print(
            f"cifartune {args.command}: error: {exc.filename or ''}: {exc.strerror}; the "
            "results written before this are complete and readable",
            file=sys.stderr,
        )
        return EXIT_STORAGE
    except Exception as exc:
        if args.debug or not _is_user_error(exc):
            raise
        print(f"cifartune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(exc: Exception) -> bool:
    return isinstance(exc, CifartuneError)
