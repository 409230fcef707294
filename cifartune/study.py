"""Running a study: results directory, lock, metadata, Ray runtime, Tuner (or its restore),
and the test-set scoring of the best configurations once the search is over."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .config import ConfigError, flatten
from .data import CifarArrays, load_arrays, to_device
from .results import (
    RAY_DIR,
    SPEC_FILE,
    STUDY_FILE,
    TEST_FILE,
    TRIALS_FILE,
    StudyRecorder,
    atomic_write_text,
    write_table,
)
from .spec import StudySpec, spec_hash, trial_config, trial_count

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyOutcome:
    directory: Path
    state: str  # completed | interrupted
    trials: pd.DataFrame
    test: pd.DataFrame


def study_directory(spec: StudySpec, storage: Path | None = None) -> Path:
    return ((storage or spec.storage) / spec.name).expanduser().resolve()


def resolve_flat(spec: StudySpec, sample: dict[str, Any]) -> dict[str, Any]:
    return flatten(trial_config(spec, sample))


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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"storage: cannot write results to {directory}: {exc.strerror or exc}; "
            "pass --storage with a writable directory"
        ) from None


class StudyMetadata:
    """study.json: written at start, updated at the end; the state says if it finished."""

    def __init__(self, directory: Path):
        self.path = directory / STUDY_FILE

    def read(self) -> dict[str, Any] | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def write(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(data, indent=2, default=str))


def _claim(directory: Path, spec: StudySpec, resume: bool) -> dict[str, Any] | None:
    """Refuse to mix two studies in one directory; return the earlier metadata when resuming."""
    previous = StudyMetadata(directory).read()
    digest = spec_hash(spec)
    if previous is None:
        if resume:
            raise ConfigError(
                f"--resume: {directory} holds no study to resume; run without --resume"
            )
        return None
    if previous.get("spec_hash") != digest:
        raise ConfigError(
            f"{directory} holds study {previous.get('name')!r} made from another spec "
            f"(hash {previous.get('spec_hash')} != {digest}); use another --storage or study name"
        )
    if not resume:
        raise ConfigError(
            f"{directory} already holds this study (state: {previous.get('state')}); "
            "pass --resume to continue it, or --storage / --set name=... for a fresh one"
        )
    if previous.get("state") == "completed":
        raise ConfigError(f"{directory}: the study is already completed; nothing to resume")
    return previous


def _init_ray(address: str | None, verbose: bool) -> None:
    import ray

    if not verbose:
        # Ray Tune's interrupt notice points at Tuner.restore and its trial-failure log is a
        # traceback of Ray internals; the CLI says how to resume and the callback logs each
        # failed trial with its reason (full traceback in the trial's error file, or with -v).
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return
    # Trial processes' own output (Ray's checkpoint chatter) reaches the terminal only with -v;
    # trial errors still do, through the trial error files the driver reads. Without --address,
    # "local" starts a private runtime instead of joining whatever `ray start` left registered
    # on this machine (a stale registration makes a plain ray.init() hang).
    ray.init(
        address=address or "local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=verbose,
    )


def _warn_if_results_not_shared(directory: Path) -> None:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        log.warning(
            "this Ray cluster has %d nodes: results and checkpoints go to %s, which every node "
            "must see at the same path (NFS or another shared filesystem), or trials on other "
            "nodes cannot save checkpoints and --resume loses them",
            len(nodes),
            directory,
        )


def run_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    resume: bool = False,
    storage: Path | None = None,
    verbose: bool = False,
) -> StudyOutcome:
    """Run (or resume) `spec` on Ray; results land under ``storage/name`` as the study goes."""
    from filelock import FileLock, Timeout

    directory = study_directory(spec, storage)
    _check_writable(directory)
    lock = FileLock(str(directory / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{directory} is in use by another cifartune run; wait for it or use another --storage"
        ) from None
    try:
        return _run_locked(spec, directory, address=address, resume=resume, verbose=verbose)
    finally:
        lock.release()


def _run_locked(
    spec: StudySpec, directory: Path, *, address: str | None, resume: bool, verbose: bool
) -> StudyOutcome:
    from ray import tune

    from .tuning import ParquetCallback, scheduler, search_algorithm, search_space, train_trial

    previous = _claim(directory, spec, resume)
    metadata = StudyMetadata(directory)
    meta = previous or {
        "name": spec.name,
        "spec_hash": spec_hash(spec),
        "started": _now(),
        **environment(),
    }
    meta.update(
        state="running",
        resumed=[*meta.get("resumed", []), _now()] if previous else [],
        address=address,
    )
    atomic_write_text(
        directory / SPEC_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    metadata.write(meta)

    arrays = load_arrays(trial_config(spec, {}).data)
    _init_ray(address, verbose)
    _warn_if_results_not_shared(directory)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, arrays=arrays, spec=spec),
        {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus},
    )
    ray_dir = directory / RAY_DIR
    if previous is not None and tune.Tuner.can_restore(str(ray_dir)):
        tuner = tune.Tuner.restore(
            str(ray_dir), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        recorder = StudyRecorder(
            directory,
            functools.partial(resolve_flat, spec),
            spec.metric,
            spec.resolved_mode,
            spec.resources.cpus,
            spec.resources.gpus,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode=spec.resolved_mode,
                search_alg=search_algorithm(spec),
                scheduler=scheduler(spec),
                num_samples=spec.search.samples,
                max_concurrent_trials=spec.resources.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=RAY_DIR,
                storage_path=str(directory),
                callbacks=[ParquetCallback(recorder)],
                failure_config=tune.FailureConfig(max_failures=spec.retries),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=spec.checkpoint.keep,
                    checkpoint_score_attribute=spec.metric,
                    checkpoint_score_order=spec.resolved_mode,
                ),
                verbose=0,
            ),
        )
    grid = tuner.fit()
    trials = (
        pd.read_parquet(directory / TRIALS_FILE)
        if (directory / TRIALS_FILE).exists()
        else pd.DataFrame()
    )
    finished = not trials.empty and trials["state"].isin(["TERMINATED", "ERROR"]).all()
    finished = finished and len(trials) >= trial_count(spec)
    test = pd.DataFrame()
    if finished:
        test = score_best_on_test(spec, arrays, trials, grid)
        if not test.empty:
            write_table(test, directory / TEST_FILE)
    meta.update(state="completed" if finished else "interrupted", finished=_now())
    metadata.write(meta)
    return StudyOutcome(directory, meta["state"], trials, test)


def score_best_on_test(
    spec: StudySpec, arrays: CifarArrays, trials: pd.DataFrame, grid: Any
) -> pd.DataFrame:
    """Score each repeat of the `spec.test_best` best configurations once on the test set, from
    the checkpoint of its best validation epoch. Ranking uses the mean over repeats."""
    from .engine import resolve_device, score_on_test
    from .local import load_checkpoint
    from .tuning import CHECKPOINT_NAME

    if spec.test_best == 0:
        return pd.DataFrame()
    scored = trials.dropna(subset=["best_metric"])
    if scored.empty:
        return pd.DataFrame()
    means = scored.groupby("group")["best_metric"].mean()
    best_groups = means.sort_values(ascending=spec.resolved_mode == "min").index[: spec.test_best]
    results = {r.metrics.get("trial_id"): r for r in grid if r.metrics}
    rows = []
    device = resolve_device("auto")
    for rank, group in enumerate(best_groups, start=1):
        for trial in scored[scored["group"] == group].itertuples():
            result = results.get(trial.trial_id)
            if result is None:
                log.warning("trial %s is not in Ray's results; not scored on test", trial.trial_id)
                continue
            checkpoints = [
                (c, m)
                for c, m in result.best_checkpoints
                if m.get(spec.metric) is not None and math.isfinite(m[spec.metric])
            ]
            if not checkpoints:
                log.warning(
                    "trial %s has no checkpoint left to score on the test set", trial.trial_id
                )
                continue
            pick = max if spec.resolved_mode == "max" else min
            checkpoint, metrics = pick(checkpoints, key=lambda cm: cm[1][spec.metric])
            with checkpoint.as_directory() as path:
                state = load_checkpoint(Path(path) / CHECKPOINT_NAME, device)
            config = trial_config(spec, result.config).model_copy(update={"device": device.type})
            data = to_device(arrays, config.data, device)
            rows.append(
                {
                    "rank": rank,
                    "group": group,
                    "trial_id": trial.trial_id,
                    "seed": trial.seed,
                    "variant": trial.variant,
                    "epoch": metrics["epoch"],
                    spec.metric: metrics[spec.metric],
                    **score_on_test(config, data, state),
                }
            )
    return pd.DataFrame(rows)
