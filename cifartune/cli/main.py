"""The ``cifartune`` command line: its parser and the error handling every command shares. The
command modules print; library code logs.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from cifartune.cli.local import cmd_inspect, cmd_train, cmd_validate
from cifartune.cli.study import cmd_resume, cmd_run, cmd_submit
from cifartune.cli.views import cmd_dashboard, cmd_export_optuna, cmd_report, cmd_status
from cifartune.errors import CifartuneError

EXIT_USAGE = 2
EXIT_STORAGE = 74  # EX_IOERR
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def _trial_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="trial config YAML (defaults otherwise)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)",
    )


def _optuna_storage_arg(parser: argparse.ArgumentParser) -> None:
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


def _results_root_refused(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", action=_StorageIsTheResultsRoot, help=argparse.SUPPRESS)


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

    train = _command(sub, "train", "train one configuration locally, without Ray")
    _trial_config_args(train)
    train.add_argument("--out", type=Path, help="output directory (default runs/train-<time>)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides `device`")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--replay",
        metavar="RESULTS[/TRIAL]",
        help="train a study's trial again from scratch with the hyperparameters it had at each "
        "epoch (a PBT trial's schedule, following its exploits); RESULTS is the study's "
        "results directory (path or URI), TRIAL one of its trial ids (default: the best)",
    )
    train.add_argument("--trial", help="with --replay: the trial (default: the study's best)")
    train.set_defaults(func=cmd_train)

    inspect = _command(sub, "inspect", "print the network's layer table (seed Q7, Q10)")
    _trial_config_args(inspect)
    inspect.set_defaults(func=cmd_inspect)

    validate = _command(sub, "validate", "check a study spec fully; start nothing")
    validate.add_argument("spec", type=Path, help="the study spec (YAML), e.g. studies/smoke.yaml")
    validate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key as run would, e.g. --set base.epochs=2 (repeatable)",
    )
    validate.set_defaults(func=cmd_validate)

    run = _command(sub, "run", "run a study on Ray Tune")
    run.add_argument("spec", type=Path, help="the study spec (YAML), e.g. studies/smoke.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. --set base.epochs=2 --set space.optim.lr=[0.1]",
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    run.add_argument("--resume", action="store_true", help="continue an interrupted study")
    run.add_argument("--address", help="join an existing Ray cluster (e.g. auto or HOST:6379)")
    _optuna_storage_arg(run)
    run.add_argument(
        "--storage", help="results root, a directory or URI (default: the spec's storage)"
    )
    run.set_defaults(func=cmd_run)

    resume = _command(sub, "resume", "continue an interrupted study from its results directory")
    resume.add_argument("results", help="the study's results directory (path or URI)")
    errored = resume.add_mutually_exclusive_group()
    errored.add_argument(
        "--skip-errored",
        dest="restart_errored",
        action="store_false",
        help="keep trials that failed (after their retries) as errors (default)",
    )
    errored.add_argument(
        "--restart-errored",
        dest="restart_errored",
        action="store_true",
        help="run trials that failed again, from scratch",
    )
    resume.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="where the data lives (--set base.data.dir=PATH, base.data.download=true) and "
        "the budget of an interrupted study (--set budget.wall=12h, budget.gpu_hours=..., "
        "budget.cpu_hours=..., budget.target.val/top1=80)",
    )
    resume.add_argument("--address", help="join an existing Ray cluster (e.g. auto or HOST:6379)")
    _optuna_storage_arg(resume)
    resume.set_defaults(func=cmd_resume, restart_errored=False)

    status = _command(sub, "status", "summarize a running or finished study")
    status.add_argument("results", help="the study's results directory (path or URI)")
    status.add_argument("--watch", action="store_true", help="redraw until the study stops")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws")
    status.set_defaults(func=cmd_status)

    mirror_help = "Optuna storage URL (sqlite:///x.db, ...) or journal file (default: the one "
    mirror_help += "the study ran with, else RESULTS_DIR/optuna.journal)"
    export = _command(sub, "export-optuna", "mirror a study into an Optuna storage")
    export.add_argument("results", type=Path, help="the study's results directory")
    export.add_argument("--optuna-storage", metavar="URL", help=mirror_help)
    _results_root_refused(export)
    export.set_defaults(func=cmd_export_optuna)

    dashboard = _command(sub, "dashboard", "optuna-dashboard on a running or finished study")
    dashboard.add_argument("results", type=Path, help="the study's results directory")
    dashboard.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    dashboard.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    dashboard.add_argument("--optuna-storage", metavar="URL", help=mirror_help)
    _results_root_refused(dashboard)
    dashboard.set_defaults(func=cmd_dashboard)

    submit = _command(sub, "submit", "run a study as a Ray Job on a cluster")
    submit.add_argument("spec", type=Path, help="the study spec, inside --working-dir")
    submit.add_argument(
        "--address",
        help="the head's Jobs server (default: $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    submit.add_argument("--storage", help="results root every node reaches, e.g. s3://BUCKET/X")
    submit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, passed on to the job's cifartune run (repeatable)",
    )
    submit.add_argument(
        "--working-dir", type=Path, default=Path("."), help="uploaded with the job (default: .)"
    )
    submit.add_argument(
        "--wait", action="store_true", help="stream the job's logs; exit with its status"
    )
    submit.set_defaults(func=cmd_submit)

    report = _command(sub, "report", "HTML + Markdown report of one or several studies")
    report.add_argument("results", nargs="+", help="study results directories (paths or URIs)")
    report.add_argument("--out", type=Path, help="output directory (default reports/<study>)")
    report.add_argument("--title", help="report title")
    report.set_defaults(func=cmd_report)
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
        return func(args)
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
