"""The study commands: ``run``, ``resume``, ``submit``: thin shells over the study layer that
print what it returns.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from cifartune.cli.arguments import Command, optuna_storage_arg, overrides_arg
from cifartune.cli.views import _print_summary
from cifartune.config.resolved import ResolvedSpec
from cifartune.errors import EXIT_INTERRUPTED, ConfigError

EXIT_FAILED = 1


def _print_plan(resolved: ResolvedSpec, address: str | None) -> int:
    """Print what `run` would do here; 2 when no trial could ever start on this machine (and
    no cluster --address is given), as `run` itself would refuse."""
    import os

    import torch

    from cifartune.config.expand import grid_points
    from cifartune.config.resolved import plan

    spec = resolved.spec
    cpus, gpus = float(os.cpu_count() or 1), float(torch.cuda.device_count())
    p = plan(resolved, cpus=cpus, gpus=gpus)
    print(
        f"study {spec.name}: {spec.search.algorithm} search, {spec.scheduler.name} scheduler, "
        f"metric {spec.metric} ({resolved.mode})"
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
    if spec.budget is not None:
        limits = [f"{k} {v}" for k, v in spec.budget.model_dump(exclude_none=True).items()]
        print(
            f"budget: {', '.join(limits)}; the first reached ends the study (counted from the "
            "results directory, across resumes)"
        )
    res = spec.resources
    print(
        f"resources: {res.cpus:g} CPU + {res.gpus:g} GPU per trial; this machine has "
        f"{cpus:g} CPUs, {gpus:g} GPUs -> {p.concurrent} trial(s) at once (limited by "
        f"{p.bottleneck}), about {p.waves} wave(s)"
    )
    if p.concurrent == 0 and address is None:
        need = f"{res.gpus:g} GPU" if p.bottleneck == "GPUs" else f"{res.cpus:g} CPUs"
        print(
            f"cifartune run: error: resources: each trial needs {need}, which this machine does "
            f"not have ({cpus:g} CPUs, {gpus:g} GPUs): no trial could start; run it on a machine "
            "or cluster (--address) that has them, or lower resources.gpus / resources.cpus",
            file=sys.stderr,
        )
        return 2
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cifartune.config.resolved import resolve
    from cifartune.config.validation import load_spec

    spec = resolve(load_spec(args.spec, args.overrides))
    if args.dry_run:
        return _print_plan(spec, args.address)
    return _run(spec, args, resume=args.resume, storage=args.storage)


def cmd_resume(args: argparse.Namespace) -> int:
    from cifartune.config.resolved import resolve
    from cifartune.config.spec import RESUME_KEYS, resume_may_set
    from cifartune.store.directory import StudyDirectory
    from cifartune.store.study_data import read_study

    study = read_study(args.results)  # a clear error for what is not a study
    stored = StudyDirectory(study.directory)
    for override in args.overrides:
        key = override.partition("=")[0].strip()
        if not resume_may_set(key):
            raise ConfigError(
                f"--set {override}: resume changes only where the data lives and the budget "
                f"({', '.join(RESUME_KEYS)}.*); to change what is trained, run a new study"
            )
        if key.startswith("budget") and study.meta.get("state") == "completed":
            ended = study.meta.get("stop_reason") or "every trial finished"
            raise ConfigError(
                f"--set {override}: study {stored.name} is completed ({ended}), and a "
                "completed study does not continue, whatever its budget: Ray has ended its "
                "trials. A budget changes on resume for an interrupted study; to train more, "
                f"run the spec as a new study: cifartune run {stored.spec_file} "
                f"--set name={stored.name}-more --set {override}"
            )
    spec = stored.spec(args.overrides)
    if spec.name != stored.name:
        raise ConfigError(f"{stored}: holds study {spec.name!r}; pass its own directory")
    # The stored spec names the study; its parent is the storage, wherever it has moved to.
    return _run(resolve(spec), args, resume=True, storage=study.directory.parent.uri)


def _run(spec: ResolvedSpec, args: argparse.Namespace, *, resume: bool, storage: str | None) -> int:
    from cifartune.study.driver import RunOptions, run_study, study_directory
    from cifartune.study.signals import stop_on_signals
    from cifartune.study.supervise import end_own_session, run_supervised, supervised

    study = study_directory(spec.spec, storage)
    directory = study.location
    if supervised():
        # Registered before ray.init registers its shutdown, so it runs after it.
        atexit.register(end_own_session)
    else:
        # What fails in seconds fails here, in the process the user started; the study itself
        # runs in a child of its own session (see ``supervise``).
        from cifartune.engine.data import describe_source

        describe_source(spec.base.data, also=spec.data_probes)
        return run_supervised(args.argv)
    print(f"study {spec.name}: results in {directory}")
    logging.getLogger("cifartune").setLevel(logging.INFO)
    # SIGTERM and SIGHUP stop the study like Ctrl-C: Ray Tune's SIGINT handler ends it cleanly
    # and Ray's processes are shut down on the way out (or, past the deadline, stopped).
    stop_on_signals()

    def forced_stop(where: Any) -> None:
        print(_interrupted_hint(where), file=sys.stderr, flush=True)

    try:
        options = RunOptions(
            address=args.address,
            resume=resume,
            storage=storage,
            verbose=args.verbose > 0,
            restart_errored=getattr(args, "restart_errored", False),
            optuna_storage=args.optuna_storage,
        )
        outcome = run_study(spec, options, on_forced_stop=forced_stop)
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
    if not study.holds_study():  # stopped before its first trial: nothing kept
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


def cmd_submit(args: argparse.Namespace) -> int:
    from cifartune.study import submit

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


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune run``'s arguments."""
    parser.add_argument("spec", type=Path, help="the study spec (YAML), e.g. studies/smoke.yaml")
    overrides_arg(
        parser,
        "override a spec key, e.g. --set base.epochs=2 --set space.optim.lr=[0.1]",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study")
    parser.add_argument("--address", help="join an existing Ray cluster (e.g. auto or HOST:6379)")
    optuna_storage_arg(parser)
    parser.add_argument(
        "--storage", help="results root, a directory or URI (default: the spec's storage)"
    )


def _resume_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune resume``'s arguments."""
    parser.add_argument("results", help="the study's results directory (path or URI)")
    errored = parser.add_mutually_exclusive_group()
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
    overrides_arg(
        parser,
        "where the data lives (--set base.data.dir=PATH, base.data.download=true) and "
        "the budget of an interrupted study (--set budget.wall=12h, budget.gpu_hours=..., "
        "budget.cpu_hours=..., budget.target.val/top1=80)",
    )
    parser.add_argument("--address", help="join an existing Ray cluster (e.g. auto or HOST:6379)")
    optuna_storage_arg(parser)
    parser.set_defaults(restart_errored=False)


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    """``cifartune submit``'s arguments."""
    parser.add_argument("spec", type=Path, help="the study spec, inside --working-dir")
    parser.add_argument(
        "--address",
        help="the head's Jobs server (default: $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    parser.add_argument("--storage", help="results root every node reaches, e.g. s3://BUCKET/X")
    overrides_arg(
        parser,
        "override a spec key, passed on to the job's cifartune run (repeatable)",
    )
    parser.add_argument(
        "--working-dir", type=Path, default=Path("."), help="uploaded with the job (default: .)"
    )
    parser.add_argument(
        "--wait", action="store_true", help="stream the job's logs; exit with its status"
    )


RUN = Command("run", "run a study on Ray Tune", _run_arguments, cmd_run)
RESUME = Command(
    "resume",
    "continue an interrupted study from its results directory",
    _resume_arguments,
    cmd_resume,
)
SUBMIT = Command("submit", "run a study as a Ray Job on a cluster", _submit_arguments, cmd_submit)
