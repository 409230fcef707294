"""The commands that read a study's files: ``status``, ``export-optuna``, ``dashboard`` and
``report``."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from cifartune.cli.arguments import MIRROR_HELP, Command, results_root_refused


def _print_summary(where: Any, *, hint: bool = True) -> None:
    from cifartune.store.metadata import describe_driver, driver_gone, lock_is_free
    from cifartune.store.study_data import read_study, status_columns
    from cifartune.views.status import best_line, budget_lines

    study = read_study(where, epoch_columns=status_columns)
    directory, meta = study.directory, study.meta
    state = str(meta.get("state"))
    if driver_gone(meta, lock_free=lock_is_free(directory)):
        state = f"interrupted: its {describe_driver(meta)} is gone"
        study = study.driver_gone()
    trials = study.trials
    print(
        f"study {study.name} [{state}] started {meta.get('started')}"
        + (f", finished {meta['finished']}" if meta.get("finished") else "")
    )
    if state.startswith("interrupted") and hint:
        print(f"continue it with: cifartune resume {directory}")
    live = meta.get("state") == "running" and not state.startswith("interrupted")
    for line in budget_lines(study, dt.datetime.now(dt.UTC), live=live):
        print(line)
    if meta.get("error"):
        print(f"every trial failed; most common error: {meta['error']}")
    if trials.empty:
        print("no trial has reported yet")
        return
    states = trials["stop_reason"].value_counts().to_dict()
    print(
        f"trials: {len(trials)} ({', '.join(f'{n} {k}' for k, n in states.items())}); "
        f"epochs done: {len(study.epochs)}; compute {_hours(trials['cpu_s'].sum())} CPU used "
        f"({_hours(trials['reserved_cpu_s'].sum())} CPU, "
        f"{_hours(trials['reserved_gpu_s'].sum())} GPU reserved)"
    )
    best = best_line(study)
    if not best:
        return
    print(best)
    if not study.test.empty:
        top = study.test[study.test["rank"] == 1]
        print(
            f"test set (best configuration, {len(top)} repeat(s)): top1 "
            f"{top['test/top1'].mean():.2f}% (per repeat: "
            f"{', '.join(f'{v:.2f}' for v in top['test/top1'])})"
        )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def cmd_status(args: argparse.Namespace) -> int:
    if not args.watch:
        _print_summary(args.results)
        return 0
    from cifartune.study.signals import stop_on_signals
    from cifartune.views.status import CLEAR_SCREEN, follow

    stop_on_signals()
    try:
        for frame in follow(args.results, interval=args.interval):
            print(CLEAR_SCREEN + frame + "(Ctrl-C to stop watching)", end="", flush=True)
    except KeyboardInterrupt:
        pass
    print()
    return 0


def cmd_export_optuna(args: argparse.Namespace) -> int:
    from cifartune.store.optuna_mirror import export_optuna, load_study_code, storage_location

    storage = args.optuna_storage or _stored_optuna_storage(args.results)
    mirror = export_optuna(args.results, storage)
    name = mirror.study.study_name
    where = storage_location(args.results, storage)
    print(f"Optuna study {name!r}: {len(mirror.study.trials)} trials in {where}")
    print("open it in Python with:\n" + load_study_code(args.results, storage, name))
    option = f" --optuna-storage {storage}" if storage else ""
    print(f"or in a browser with: cifartune dashboard {args.results}{option}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from cifartune.study.signals import stop_on_signals
    from cifartune.views.dashboard import serve_dashboard

    stop_on_signals()  # SIGTERM (a service manager, `timeout`) stops it as Ctrl-C does

    def ready(url: str) -> None:
        print(f"optuna-dashboard: {url}  (Ctrl-C to stop)", flush=True)

    storage = args.optuna_storage or _stored_optuna_storage(args.results)
    serve_dashboard(args.results, host=args.host, port=args.port, storage_url=storage, ready=ready)
    return 0


def _stored_optuna_storage(results: Path) -> str | None:
    """The --optuna-storage the study ran with (study.json), so nobody retypes it."""
    from cifartune.store.study_data import read_study

    stored = read_study(results).meta.get("optuna_storage")
    return str(stored) if stored else None


def cmd_report(args: argparse.Namespace) -> int:
    from cifartune.views.reports import build_report

    report = build_report(args.results, args.out, args.title)
    print(
        f"report: {report.out / 'report.html'} ({len(report.images)} figures; "
        f"summary {report.out / 'summary.md'})"
    )
    return 0


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune status``'s arguments."""
    parser.add_argument("results", help="the study's results directory (path or URI)")
    parser.add_argument("--watch", action="store_true", help="redraw until the study stops")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between redraws")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune export-optuna``'s arguments."""
    parser.add_argument("results", type=Path, help="the study's results directory")
    parser.add_argument("--optuna-storage", metavar="URL", help=MIRROR_HELP)
    results_root_refused(parser)


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune dashboard``'s arguments."""
    parser.add_argument("results", type=Path, help="the study's results directory")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--optuna-storage", metavar="URL", help=MIRROR_HELP)
    results_root_refused(parser)


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune report``'s arguments."""
    parser.add_argument("results", nargs="+", help="study results directories (paths or URIs)")
    parser.add_argument("--out", type=Path, help="output directory (default reports/<study>)")
    parser.add_argument("--title", help="report title")


STATUS = Command("status", "summarize a running or finished study", _status_arguments, cmd_status)
EXPORT_OPTUNA = Command(
    "export-optuna", "mirror a study into an Optuna storage", _export_arguments, cmd_export_optuna
)
DASHBOARD = Command(
    "dashboard",
    "optuna-dashboard on a running or finished study",
    _dashboard_arguments,
    cmd_dashboard,
)
REPORT = Command(
    "report", "HTML + Markdown report of one or several studies", _report_arguments, cmd_report
)
