"""Running a study: the Ray runtime, the Tuner (or its restore over the results directory), and
the test-set scoring of the best configurations once the search is over (ownership of the
results directory is in ``claim``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from cifartune.config.resolved import ResolvedSpec
from cifartune.config.spec import StudySpec
from cifartune.engine.data import CifarArrays, describe_source, load_arrays
from cifartune.errors import ConfigError
from cifartune.storage import Location
from cifartune.store.budget import read_reached
from cifartune.store.checkpoints import (
    discard_trial_files,
    read_failure,
    set_aside_orphans,
)
from cifartune.store.columns import EFFECTIVE_PREFIX
from cifartune.store.directory import StudyDirectory
from cifartune.store.epochs import convert_legacy as convert_legacy_epochs
from cifartune.store.lineage import open_barrier
from cifartune.store.metadata import StudyMetadata, describe_driver, now
from cifartune.store.study_data import read_study
from cifartune.store.trial_states import FINAL_STATES, stop_unfinished
from cifartune.store.trial_states import convert_legacy as convert_legacy_trials
from cifartune.study.claim import check_writable, claim
from cifartune.study.cluster import check_trials_fit
from cifartune.study.environment import environment
from cifartune.study.runtime import (
    check_results_shared,
    init_ray,
    local_runtime_dead,
    stop_local_runtime,
)
from cifartune.study.scoring import score_best_on_test
from cifartune.study.signals import stop_deadline
from cifartune.study.supervise import end_own_session, user_pid

if TYPE_CHECKING:  # Ray is imported where a study runs: the command a user starts stays light
    from ray import tune
    from ray.tune import Stopper
    from ray.tune.schedulers import TrialScheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How a study is run, besides what it is (the spec): none of these change its results."""

    address: str | None = None  # a Ray cluster to join; None: a private local runtime
    resume: bool = False
    storage: str | None = None  # the results root; None: the spec's
    verbose: bool = False  # Ray's own output too
    restart_errored: bool = False  # a resume runs trials that failed again, from scratch
    optuna_storage: str | None = None  # where the Optuna mirror goes; None: beside the results


@dataclass(frozen=True)
class StudyOutcome:
    directory: Location
    state: str  # completed | failed | interrupted
    trials: pd.DataFrame
    test: pd.DataFrame
    already_completed: bool = False  # resumed a finished (completed or failed) study: nothing ran
    error: str | None = None  # failed: the most common error of its trials


def study_directory(spec: StudySpec, storage: str | None = None) -> StudyDirectory:
    """``<storage>/<name>``: a local directory or an object-store URI (see ``storage``)."""
    return StudyDirectory.of_study(storage or spec.storage, spec.name)


def run_study(
    spec: ResolvedSpec,
    options: RunOptions = RunOptions(),
    *,
    on_forced_stop: Callable[[Location], None] | None = None,
) -> StudyOutcome:
    """Run (or resume) `spec` on Ray; results land under ``storage/name`` as the study goes.

    The data source is checked before anything is written. A start that fails before any trial
    reported leaves nothing behind (a new directory is removed, a resumed one keeps its state);
    a failure or interrupt after that leaves the study interrupted and resumable. A stop signal
    that cannot end the study cleanly in time (see ``signals``) marks it interrupted, calls
    `on_forced_stop` and ends the process.
    """
    from filelock import FileLock, Timeout

    study = study_directory(spec.spec, options.storage)
    directory = study.location
    describe_source(spec.base.data, also=spec.data_probes)
    fresh = not directory.exists()
    check_writable(directory)
    # One driver per study: a file lock on a local disk; in an object store, which has none,
    # the claim below refuses a study whose driver's heartbeat is fresh.
    lock_file = study.lock_file()
    lock = FileLock(str(lock_file)) if lock_file is not None else None
    try:
        if lock is not None:
            # A few seconds: a driver killed with its supervisor may still be exiting.
            lock.acquire(timeout=3)
    except Timeout:
        holder = study.metadata().read() or {}
        raise ConfigError(
            f"{directory} is in use by another cifartune run ({describe_driver(holder)}); "
            f"follow it with: cifartune status {directory}, or use another --storage"
        ) from None
    metadata = study.metadata()
    failed_before_trials = False

    def force_stop() -> None:
        metadata.stop_heartbeat()
        if metadata.data:
            metadata.write(state="interrupted", finished=now())
        stop_local_runtime()
        end_own_session()
        if on_forced_stop is not None:
            on_forced_stop(directory)

    try:
        with stop_deadline(force_stop, local_runtime_dead):
            return _run_locked(spec, study, metadata, options)
    except BaseException:
        failed_before_trials = fresh and not study.has_epochs()
        if metadata.data and not failed_before_trials:
            metadata.write(state="interrupted", finished=now())
        raise
    finally:
        metadata.stop_heartbeat()
        if lock is not None:
            lock.release()
        if failed_before_trials:
            directory.rmtree()


def _run_locked(
    resolved: ResolvedSpec, study: StudyDirectory, metadata: StudyMetadata, options: RunOptions
) -> StudyOutcome:
    spec, directory = resolved.spec, study.location
    previous = claim(directory, resolved, options.resume)
    ended = previous.get("state") if previous is not None else None
    if ended == "completed" or (ended == "failed" and not options.restart_errored):
        return StudyOutcome(
            directory, str(ended), _read_trials(directory), pd.DataFrame(), True,
            error=previous.get("error") if previous else None,
        )  # fmt: skip
    metadata.data = previous or {
        "name": spec.name,
        "spec_hash": resolved.hash,
        "started": now(),
        **environment(),
    }
    metadata.write(
        state="running",
        host=socket.gethostname(),
        pid=user_pid(),  # the command the user started, the one to signal
        driver_pid=os.getpid(),  # the process running the study (its supervised child)
        resumed=[*metadata.data.get("resumed", []), now()] if previous else [],
        runs=[*metadata.data.get("runs", []), {"started": now()}],  # what a wall budget counts
        address=options.address,
        optuna_storage=options.optuna_storage or metadata.data.get("optuna_storage"),
    )
    metadata.start_heartbeat()
    if previous is not None:
        _convert_legacy_layout(directory)
    study.write_spec(spec)
    from cifartune.study.budget import BudgetScheduler, budgeted
    from cifartune.study.search import scheduler as study_scheduler

    # The data first: an unreadable file fails here in a second, not after a Ray start.
    arrays = load_arrays(resolved.base.data)
    scheduler, stopper = budgeted(study_scheduler(resolved), resolved, directory)
    if isinstance(scheduler, BudgetScheduler) and scheduler.guard.exhausted():
        # Spent before this driver started (a limit reached as its predecessor stopped):
        # nothing trains; what was running ends as stopped by the budget.
        stop_unfinished(directory)
    else:
        init_ray(options.address, options.verbose)
        check_results_shared(directory)
        check_trials_fit(spec.resources.cpus, spec.resources.gpus)
        optuna_storage = metadata.data["optuna_storage"]
        tuner = _tuner(
            resolved, study, arrays, previous, options, scheduler, stopper, optuna_storage
        )
        tuner.fit()
    trials = _read_trials(directory)
    budget_spent = read_reached(directory) if spec.budget is not None else None
    finished = not trials.empty and trials["state"].isin(FINAL_STATES).all()
    finished = finished and (len(trials) >= resolved.trials or budget_spent is not None)
    test = pd.DataFrame()
    error = most_common_error(trials) if finished else None
    if error is not None:
        state = "failed"
    elif finished:
        state = "completed"
        test = score_best_on_test(resolved, arrays, trials, study)
        if not test.empty:
            study.write_test(test)
    else:
        state = "interrupted"
    metadata.stop_heartbeat()
    metadata.write(
        state=state,
        finished=now(),
        error=error,
        stop_reason=budget_spent if state == "completed" else None,
        effective=effective_summary(trials),
    )
    return StudyOutcome(directory, state, trials, test, error=error)


def _tuner(
    resolved: ResolvedSpec,
    study: StudyDirectory,
    arrays: CifarArrays,
    previous: dict[str, Any] | None,
    options: RunOptions,
    scheduler: TrialScheduler,
    stopper: Stopper | None,
    optuna_storage: str | None,
) -> tune.Tuner:
    """A new Tuner for the study, or Ray's own, restored from the results directory (with the
    spec's budget as resumed: Ray restores the scheduler and stopper it pickled, and offers no
    way to give others, so they are set on the restored Tuner's configs)."""
    from ray import tune

    from cifartune.study.budget import BudgetScheduler, budgeted
    from cifartune.study.callback import RayTrialLinesToLog, StudyCallback
    from cifartune.study.pbt import EpochPBT
    from cifartune.study.search import search_algorithm, search_space
    from cifartune.study.trainable import train_trial

    spec, directory = resolved.spec, study.location
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, arrays=arrays, spec=resolved, directory=str(directory)),
        {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus},
    )
    storage_path, ray_name, ray_filesystem = study.ray_state()
    ray_path = f"{storage_path}/{ray_name}"
    if previous is not None and tune.Tuner.can_restore(ray_path, ray_filesystem):
        if options.restart_errored:
            for trial_id in _errored_trials(directory):
                discard_trial_files(directory, trial_id)
        tuner = tune.Tuner.restore(
            ray_path,
            trainable,
            storage_filesystem=ray_filesystem,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=options.restart_errored,
        )
        restored = tuner._local_tuner
        if restored is not None:
            pickled = restored._tune_config.scheduler or scheduler
            inner = pickled.inner if isinstance(pickled, BudgetScheduler) else pickled
            if isinstance(inner, EpochPBT):
                inner.resume_at(open_barrier(directory, resolved.perturbation_epochs))
            restored._tune_config.scheduler, restored._run_config.stop = budgeted(
                inner, resolved, directory
            )
            callbacks = restored._run_config.callbacks or []
            if not any(isinstance(c, RayTrialLinesToLog) for c in callbacks):
                restored._run_config.callbacks = [*callbacks, RayTrialLinesToLog()]
        return tuner
    # Killed before Ray's first snapshot: no trial can be resumed under its id.
    set_aside_orphans(directory, set())
    return tune.Tuner(
        trainable,
        param_space=search_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=resolved.mode,
            search_alg=search_algorithm(resolved, directory),
            scheduler=scheduler,
            num_samples=spec.search.samples,
            # One trial process per slot for the whole study: imports, the data from the
            # object store and its device copy are paid once per process, not per trial
            # (everything a trial sets, seeds and threads included, is set anew by fit).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=ray_name,
            storage_path=storage_path,
            storage_filesystem=ray_filesystem,
            callbacks=[StudyCallback(directory, resolved, optuna_storage), RayTrialLinesToLog()],
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            stop=stopper,
            verbose=0,
        ),
    )


def effective_summary(trials: pd.DataFrame) -> dict[str, list[Any]]:
    """What the study's trials really ran with (``effective/*``), each key's distinct values
    across trials (study.json): e.g. precision ["bf16"] where ``auto`` picked it everywhere."""
    columns = [c for c in trials.columns if c.startswith(EFFECTIVE_PREFIX)]
    return {
        c.removeprefix(EFFECTIVE_PREFIX): sorted(trials[c].dropna().unique().tolist(), key=str)
        for c in columns
    }


def most_common_error(trials: pd.DataFrame) -> str | None:
    """When every trial of a finished study failed: its most common error, with how many trials
    it ended ("3 of 4 trials: DataError: ..."); None when any trial ran to a result."""
    if trials.empty or not (trials["stop_reason"] == "error").all():
        return None
    errors = trials["error"].fillna("(no error text)").value_counts()
    return f"{errors.iloc[0]} of {len(trials)} trials: {errors.index[0]}"


def _read_trials(directory: Location) -> pd.DataFrame:
    """The trial table, each trial summarized from its epoch rows."""
    return read_study(directory).trials


def _convert_legacy_layout(directory: Location) -> None:
    """A study of an older version, resumed: its whole-trial epoch files and its trial table
    become files that never change (see store.epochs and store.trial_states), once."""
    trials = convert_legacy_epochs(directory)
    rows = convert_legacy_trials(directory)
    if trials or rows:
        log.warning(
            "%s: converted to the current results layout (%d trials' epoch files, %d trial rows); "
            "the older files are kept in withdrawn/legacy/",
            directory,
            len(trials),
            rows,
        )


def _errored_trials(directory: Location) -> list[str]:
    """Trials that errored after their retries, less those a config or data error ended for
    good (Ray holds those as finished, and the same spec would fail them the same way)."""
    trials = _read_trials(directory)
    errored = [] if trials.empty else trials.loc[trials["state"] == "ERROR", "trial_id"]
    return [t for t in errored if read_failure(directory, t) is None]
