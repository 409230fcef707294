"""The study commands of the CLI (run, resume, submit, status, export-optuna, dashboard): thin
shells over the library that print what it returns. With ``cli``, the only modules that print."""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .signals import EXIT_INTERRUPTED

EXIT_FAILED = 1


def _print_plan(spec: Any) -> None:
    import os

    import torch

    from .spec import grid_points, plan

    cpus, gpus = float(os.cpu_count() or 1), float(torch.cuda.device_count())
    p = plan(spec, cpus=cpus, gpus=gpus)
    print(
        f"study {spec.name}: {spec.search.algorithm} search, {spec.scheduler.name} scheduler, "
        f"metric {spec.metric} ({spec.resolved_mode})"
    )
    points = list(grid_points(spec))
    header = list(points[0]) if points and points[0] else []
    sampled = [k for k, v in spec.space.items() if not isinstance(v, list)]
    if spec.search.algorithm == "optuna":
        lists = [k for k, v in spec.space.items() if isinstance(v, list)]
        if lists or spec.variants:
            print(
                "note: under optuna, lists (and variants) are categorical choices, not a grid: "
                + ", ".join(lists + (["variant"] if spec.variants else []))
            )
        print(
            f"{p.trials} trials sampled by Optuna TPE (seed {spec.search.seed}) over: "
            + ", ".join(spec.space)
        )
    else:
        configurations = len(points) // spec.repeats
        print(
            f"{configurations} configuration(s) x {spec.repeats} repeat(s) (seeds) x "
            f"{spec.search.samples} sample(s) = {p.trials} trials"
            + (f"; each sample draws {', '.join(sampled)}" if sampled else "")
        )
        if header:
            print("  " + "  ".join(f"{h:>16}" for h in header))
            for point in points[:50]:
                print("  " + "  ".join(f"{point[h]!s:>16}" for h in header))
            if len(points) > 50:
                print(f"  ... {len(points) - 50} more")
    print(f"epochs: {p.epochs_per_trial} per trial, worst case {p.worst_case_epochs} trial-epochs")
    if p.expected_epochs is not None:
        print(
            f"ASHA: rungs at epochs {p.rungs}, reduction factor {spec.scheduler.reduction_factor}; "
            f"expected about {p.expected_epochs:.0f} trial-epochs "
            f"({p.expected_epochs / max(p.worst_case_epochs, 1):.0%} of worst case)"
        )
    res = spec.resources
    print(
        f"resources: {res.cpus:g} CPU + {res.gpus:g} GPU per trial; this machine has "
        f"{cpus:g} CPUs, {gpus:g} GPUs -> {p.concurrent} trial(s) at once (limited by "
        f"{p.bottleneck}), about {p.waves} wave(s)"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from .spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.dry_run:
        _print_plan(spec)
        return 0
    return _run(spec, args, resume=args.resume)


def cmd_resume(args: argparse.Namespace) -> int:
    from .config import load_yaml_text
    from .results import SPEC_FILE, read_study
    from .spec import LOCATION_KEYS, build_spec

    directory = read_study(args.results).directory  # a clear error for what is not a study
    for override in args.overrides:
        key = override.partition("=")[0].strip().removeprefix("base.")
        if key not in LOCATION_KEYS:
            raise ConfigError(
                f"--set {override}: resume changes only where the data lives "
                f"({', '.join('base.' + k for k in LOCATION_KEYS)}); to change what is trained, "
                "run a new study"
            )
    stored = directory / SPEC_FILE
    spec = build_spec(load_yaml_text(stored.read_text(), str(stored)), args.overrides)
    # The stored spec names the study; its parent is the storage, wherever it has moved to.
    args.storage = directory.parent.uri
    if spec.name != directory.name:
        raise ConfigError(f"{directory}: holds study {spec.name!r}; pass its own directory")
    return _run(spec, args, resume=True)


def _run(spec: Any, args: argparse.Namespace, *, resume: bool) -> int:
    from .results import STUDY_FILE
    from .signals import stop_on_signals
    from .study import run_study, study_directory
    from .supervise import end_own_session, run_supervised, supervised

    directory = study_directory(spec, args.storage)
    if supervised():
        # Registered before ray.init registers its shutdown, so it runs after it.
        atexit.register(end_own_session)
    else:
        # What fails in seconds fails here, in the process the user started; the study itself
        # runs in a child of its own session (see ``supervise``).
        from .data import describe_source
        from .spec import data_probes, trial_config

        describe_source(trial_config(spec, {}).data, also=data_probes(spec))
        return run_supervised(args.argv)
    print(f"study {spec.name}: results in {directory}")
    logging.getLogger("cifartune").setLevel(logging.INFO)
    # SIGTERM and SIGHUP stop the study like Ctrl-C: Ray Tune's SIGINT handler ends it cleanly
    # and Ray's processes are shut down on the way out (or, past the deadline, stopped).
    stop_on_signals()

    def forced_stop(where: Any) -> None:
        print(_interrupted_hint(where), file=sys.stderr, flush=True)

    try:
        outcome = run_study(
            spec,
            address=args.address,
            resume=resume,
            storage=args.storage,
            verbose=args.verbose > 0,
            restart_errored=getattr(args, "restart_errored", False),
            optuna_storage=args.optuna_storage,
            on_forced_stop=forced_stop,
        )
    except KeyboardInterrupt:
        outcome = None
    except SystemExit as exc:
        # SIGTERM while ray.init runs meets Ray's own handler (sys.exit(SIGTERM)) before ours
        # is back: the same stop.
        if exc.code != signal.SIGTERM:
            raise
        outcome = None
    if outcome is not None and outcome.already_completed:
        print(f"the study is already {outcome.state}; nothing to do")
    if not (directory / STUDY_FILE).is_file():  # stopped before its first trial: nothing kept
        print("study stopped before any trial ran; nothing was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_summary(directory, hint=False)  # the hint comes once, below
    if outcome is not None and outcome.state == "failed":
        print(
            f"study failed: every trial failed; most common error ({outcome.error}); fix the "
            f"spec and run it under another name, or rerun its errored trials with: "
            f"cifartune resume {directory} --restart-errored",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if outcome is None or outcome.state != "completed":
        print(_interrupted_hint(directory), file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"results: {directory}  (report: cifartune report {directory})")
    return 0


def _interrupted_hint(directory: Any) -> str:
    return f"study interrupted; continue it with: cifartune resume {directory}"


def _print_summary(where: Any, *, hint: bool = True) -> None:
    from .claim import describe_driver, driver_gone, lock_is_free
    from .results import read_study

    study = read_study(where)
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
    scored = trials.dropna(subset=["best_metric"])
    if scored.empty:
        return
    best = scored.loc[
        scored["best_metric"].idxmax() if study.mode == "max" else scored["best_metric"].idxmin()
    ]
    factors = ", ".join(f"{k.removeprefix('config/')}={best[k]}" for k in study.factor_keys())
    if study.has_variants():
        factors = f"variant={best['variant']} {factors}"
    print(
        f"best so far: {study.metric} {best['best_metric']:.3f} (trial {best['trial_id']}, "
        f"epoch {int(best['best_epoch'])}) {factors}"
    )
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
    from .follow import CLEAR_SCREEN, follow
    from .signals import stop_on_signals

    stop_on_signals()
    try:
        for frame in follow(args.results, interval=args.interval):
            print(CLEAR_SCREEN + frame + "(Ctrl-C to stop watching)", end="", flush=True)
    except KeyboardInterrupt:
        pass
    print()
    return 0


def cmd_export_optuna(args: argparse.Namespace) -> int:
    from .optuna_mirror import export_optuna, load_study_code, storage_location

    args.storage = args.storage or _stored_optuna_storage(args.results)
    mirror = export_optuna(args.results, args.storage)
    name = mirror.study.study_name
    where = storage_location(args.results, args.storage)
    print(f"Optuna study {name!r}: {len(mirror.study.trials)} trials in {where}")
    print("open it in Python with:\n" + load_study_code(args.results, args.storage, name))
    storage = f" --storage {args.storage}" if args.storage else ""
    print(f"or in a browser with: cifartune dashboard {args.results}{storage}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .follow import serve_dashboard

    def ready(url: str) -> None:
        print(f"optuna-dashboard: {url}  (Ctrl-C to stop)", flush=True)

    storage = args.storage or _stored_optuna_storage(args.results)
    serve_dashboard(args.results, host=args.host, port=args.port, storage_url=storage, ready=ready)
    return 0


def _stored_optuna_storage(results: Path) -> str | None:
    """The --optuna-storage the study ran with (study.json), so nobody retypes it."""
    from .results import read_study

    stored = read_study(results).meta.get("optuna_storage")
    return str(stored) if stored else None


def cmd_submit(args: argparse.Namespace) -> int:
    from . import submit

    request = submit.prepare_job(args.spec, args.working_dir, args.storage, args.overrides)
    address = submit.jobs_address(args.address)
    job_id = submit.submit(request, address)
    print(f"submitted job {job_id} to {address}: {request.entrypoint}")
    follow = submit.follow_commands(address, job_id, request.study)
    print("follow it with:\n  " + "\n  ".join(follow))
    if not args.wait:
        return 0
    try:
        for chunk in submit.follow(address, job_id):
            print(chunk, end="", flush=True)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} goes on", file=sys.stderr)
        return EXIT_INTERRUPTED
    status, code, message = submit.outcome(address, job_id)
    print(f"job {job_id} {status}" + (f": {message}" if message else ""))
    return code
