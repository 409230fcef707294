"""Running a study: the Ray runtime, the Tuner (or its restore over the results directory), and
the test-set scoring of the best configurations once the search is over (ownership of the
results directory is in ``claim``)."""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from .claim import (
    StudyMetadata,
    check_writable,
    claim,
    now,
)
from .cluster import check_trials_fit
from .config import ConfigError
from .data import CifarArrays, describe_source, load_arrays, to_device
from .results import (
    EPOCHS_DIR,
    LOCK_FILE,
    RAY_DIR,
    SPEC_FILE,
    TEST_FILE,
    TRIALS_FILE,
    atomic_write_text,
    read_optional_table,
    write_table,
)
from .signals import stop_on_sigterm
from .spec import StudySpec, spec_hash, trial_config, trial_count
from .storage import Location
from .trial_store import BEST, checkpoint_dir, discard_trial_files, load_state, set_aside_orphans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyOutcome:
    directory: Location
    state: str  # completed | interrupted
    trials: pd.DataFrame
    test: pd.DataFrame
    already_completed: bool = False  # resumed a completed study: nothing ran


def study_directory(spec: StudySpec, storage: str | None = None) -> Location:
    """``<storage>/<name>``: a local directory or an object-store URI (see ``storage``)."""
    try:
        return Location.of(storage or spec.storage) / spec.name
    except (ValueError, OSError) as exc:
        raise ConfigError(f"storage = {storage or spec.storage!r}: {exc}") from None


def environment() -> dict[str, Any]:
    import optuna
    import ray
    import torch

    from . import __version__

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "versions": {
            "cifartune": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "optuna": optuna.__version__,
        },
        "hardware": {
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "gpus": gpus,
            "platform": platform.platform(),
        },
    }


class _OneLineRayLogs(logging.Filter):
    """Ray's warnings stay visible (e.g. that no node can hold a trial), as one line each: no
    traceback of Ray internals (the trial's error file keeps it) and no Tuner.restore advice
    (the CLI prints the cifartune command that resumes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Tuner.restore" in record.getMessage():
            return False
        record.msg, record.args = record.getMessage().splitlines()[0], None
        record.exc_info = record.exc_text = None
        return True


def _init_ray(address: str | None, verbose: bool) -> None:
    import ray

    if not verbose:
        for handler in logging.getLogger("ray").handlers:
            handler.addFilter(_OneLineRayLogs())
    if ray.is_initialized():
        return
    # Trial processes' own output reaches the terminal only with -v; trial errors still do,
    # through the trial error files the driver reads. Without --address (and RAY_ADDRESS),
    # "local" starts a private runtime instead of joining whatever `ray start` left registered
    # on this machine (a stale registration makes a plain ray.init() hang).
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=verbose,
    )
    # ray.init replaces SIGTERM's handler with one that aborts the driver (leaving its worker
    # processes behind): SIGTERM (Slurm, Kubernetes, `timeout`) must stop the study like Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        stop_on_sigterm()


def _check_results_shared(directory: Location) -> None:
    """Results on a local path must be the same directory on every node of the cluster (NFS,
    EFS): a tiny task on each node looks for a probe file written here, before any trial starts
    (otherwise a trial on a node that cannot see it fails at its first checkpoint)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not directory.local or len(nodes) < 2:
        return
    probe = directory / f"node-probe-{uuid.uuid4().hex}"
    probe.write_text("visible")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        checks = {
            f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(probe.path)
            for n in nodes
        }
        blind = [node for node, seen in checks.items() if not ray.get(seen, timeout=120)]
    finally:
        probe.unlink()
    if blind:
        raise ConfigError(
            f"storage: {directory} is a local path that these nodes cannot see: "
            f"{', '.join(blind)}; use object storage (--storage s3://bucket/prefix) or a "
            "filesystem mounted at the same path on every node (NFS, EFS)"
        )


def run_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    verbose: bool = False,
    restart_errored: bool = False,
    optuna_storage: str | None = None,
) -> StudyOutcome:
    """Run (or resume) `spec` on Ray; results land under ``storage/name`` as the study goes.

    The data source is checked before anything is written. A start that fails before any trial
    reported leaves nothing behind (a new directory is removed, a resumed one keeps its state);
    a failure or interrupt after that leaves the study interrupted and resumable.
    """
    from filelock import FileLock, Timeout

    directory = study_directory(spec, storage)
    describe_source(trial_config(spec, {}).data)
    fresh = not directory.exists()
    check_writable(directory)
    # One driver per study: a file lock on a local disk; in an object store, which has none,
    # the claim below refuses a study whose driver's heartbeat is fresh.
    lock = FileLock(str((directory / LOCK_FILE).local_path)) if directory.local else None
    try:
        if lock is not None:
            lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{directory} is in use by another cifartune run; wait for it or use another --storage"
        ) from None
    metadata = StudyMetadata(directory)
    failed_before_trials = False
    try:
        return _run_locked(
            spec, directory, metadata, address, resume, verbose, restart_errored, optuna_storage
        )
    except BaseException:
        failed_before_trials = fresh and not any((directory / EPOCHS_DIR).files(".parquet"))
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
    spec: StudySpec,
    directory: Location,
    metadata: StudyMetadata,
    address: str | None,
    resume: bool,
    verbose: bool,
    restart_errored: bool,
    optuna_storage: str | None,
) -> StudyOutcome:
    from ray import tune

    from .tuning import StudyCallback, scheduler, search_algorithm, search_space, train_trial

    previous = claim(directory, spec, resume)
    if previous is not None and previous.get("state") == "completed":
        return StudyOutcome(directory, "completed", _read_trials(directory), pd.DataFrame(), True)
    metadata.data = previous or {
        "name": spec.name,
        "spec_hash": spec_hash(spec),
        "started": now(),
        **environment(),
    }
    metadata.write(
        state="running",
        host=socket.gethostname(),
        pid=os.getpid(),
        resumed=[*metadata.data.get("resumed", []), now()] if previous else [],
        address=address,
        optuna_storage=optuna_storage or metadata.data.get("optuna_storage"),
    )
    metadata.start_heartbeat()
    atomic_write_text(
        directory / SPEC_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    _init_ray(address, verbose)
    _check_results_shared(directory)
    check_trials_fit(spec.resources.cpus, spec.resources.gpus)
    arrays = load_arrays(trial_config(spec, {}).data)  # after the checks that fail in seconds
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, arrays=arrays, spec=spec, directory=str(directory)),
        {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus},
    )
    ray_dir = directory / RAY_DIR
    if previous is not None and tune.Tuner.can_restore(ray_dir.uri):
        if restart_errored:
            for trial_id in _errored_trials(directory):
                discard_trial_files(directory, trial_id)
        tuner = tune.Tuner.restore(
            ray_dir.uri,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=restart_errored,
        )
    else:
        # Killed before Ray's first snapshot: no trial can be resumed under its id.
        set_aside_orphans(directory, set())
        (directory / TRIALS_FILE).unlink()
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode=spec.resolved_mode,
                search_alg=search_algorithm(spec),
                scheduler=scheduler(spec),
                num_samples=spec.search.samples,
            ),
            run_config=tune.RunConfig(
                name=RAY_DIR,
                storage_path=directory.uri,
                callbacks=[StudyCallback(directory, spec, metadata.data["optuna_storage"])],
                failure_config=tune.FailureConfig(max_failures=spec.retries),
                verbose=0,
            ),
        )
    tuner.fit()
    trials = _read_trials(directory)
    finished = not trials.empty and trials["state"].isin(["TERMINATED", "ERROR"]).all()
    finished = finished and len(trials) >= trial_count(spec)
    test = pd.DataFrame()
    if finished:
        test = score_best_on_test(spec, arrays, trials, directory)
        if not test.empty:
            write_table(test, directory / TEST_FILE)
    state = "completed" if finished else "interrupted"
    metadata.stop_heartbeat()
    metadata.write(state=state, finished=now())
    return StudyOutcome(directory, state, trials, test)


def _read_trials(directory: Location) -> pd.DataFrame:
    return read_optional_table(directory / TRIALS_FILE)


def _errored_trials(directory: Location) -> list[str]:
    trials = _read_trials(directory)
    return [] if trials.empty else trials.loc[trials["state"] == "ERROR", "trial_id"].tolist()


def score_best_on_test(
    spec: StudySpec, arrays: CifarArrays, trials: pd.DataFrame, directory: Location
) -> pd.DataFrame:
    """Score each repeat of the `spec.test_best` best configurations once on the test set, from
    its best-validation checkpoint (``best.pt``, saved whenever the metric improved). Ranking
    uses the mean over repeats."""
    from .engine import resolve_device, score_on_test

    if spec.test_best == 0:
        return pd.DataFrame()
    scored = trials.dropna(subset=["best_metric"])
    if scored.empty:
        return pd.DataFrame()
    means = scored.groupby("group")["best_metric"].mean()
    best_groups = means.sort_values(ascending=spec.resolved_mode == "min").index[: spec.test_best]
    rows = []
    device = resolve_device("auto")
    for rank, group in enumerate(best_groups, start=1):
        for trial in scored[scored["group"] == group].itertuples():
            path = checkpoint_dir(directory, str(trial.trial_id)) / BEST
            if not path.is_file():
                log.warning("trial %s has no best checkpoint; not scored on test", trial.trial_id)
                continue
            best = load_state(path, device)
            config = trial_config(spec, best["sample"]).model_copy(update={"device": device.type})
            data = to_device(arrays, config.data, device)
            rows.append(
                {
                    "rank": rank,
                    "group": group,
                    "trial_id": trial.trial_id,
                    "seed": trial.seed,
                    "variant": trial.variant,
                    "epoch": best["epoch"],
                    spec.metric: best["metric"],
                    **score_on_test(config, data, best),
                }
            )
    return pd.DataFrame(rows)
