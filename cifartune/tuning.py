"""Ray Tune adapter: search space translation, the trainable, the Parquet callback, the Tuner.

This is the only module (with ``cluster``) that imports Ray. The trainable is a thin shell around
:func:`cifartune.engine.fit`: sampled flat config in, typed config built by the spec, per-epoch
``tune.report`` with a checkpoint, resume from ``tune.get_checkpoint()``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

# Quiet by default: no token-auth warning, no Ray progress tables (cifartune prints its own
# lines), no "snapshotting may become a bottleneck" warning for checkpoint-every-epoch studies.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import SearchAlgorithm, Searcher
from ray.tune.search.optuna import OptunaSearch

from .data import CifarArrays
from .engine import Metrics, StateThunk, fit
from .local import load_checkpoint, save_checkpoint
from .results import StudyRecorder
from .spec import (
    SEED_KEY,
    VARIANT_KEY,
    CategoricalDistribution,
    FloatDistribution,
    StudySpec,
    trial_config,
)

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "state.pt"


def search_space(spec: StudySpec) -> dict[str, Any]:
    """The Ray ``param_space``: lists become grid axes (categorical choices under Optuna, which
    cannot take ``grid_search``), distributions their Tune namesakes, repeats a seed grid."""
    optuna = spec.search.algorithm == "optuna"

    def axis(values: list[Any]) -> Any:
        return tune.choice(values) if optuna else tune.grid_search(values)

    space: dict[str, Any] = {}
    if spec.variants:
        space[VARIANT_KEY] = axis(list(spec.variants))
    for key, dim in spec.space.items():
        if isinstance(dim, list):
            space[key] = axis(dim)
        elif isinstance(dim, CategoricalDistribution):
            space[key] = tune.choice(dim.choices)
        elif isinstance(dim, FloatDistribution):
            space[key] = (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)
        else:  # Tune's integer ranges exclude `high`; Optuna's (and ours) include it
            space[key] = (tune.lograndint if dim.log else tune.randint)(dim.low, dim.high + 1)
    if spec.repeats > 1:
        base_seed = int(spec.base.get(SEED_KEY, 0))
        space[SEED_KEY] = tune.grid_search([base_seed + i for i in range(spec.repeats)])
    return space


def search_algorithm(spec: StudySpec) -> SearchAlgorithm | Searcher | None:
    if spec.search.algorithm == "optuna":
        return OptunaSearch(metric=spec.metric, mode=spec.resolved_mode, seed=spec.search.seed)
    if spec.search.algorithm == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=spec.search.seed)
    return None


def scheduler(spec: StudySpec) -> TrialScheduler:
    sched = spec.scheduler
    if sched.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=sched.max_epochs or trial_config(spec, {}).epochs,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
    return FIFOScheduler()


def _ray_safe(metrics: Metrics, metric: str, mode: str) -> Metrics:
    """A non-finite selection metric (a diverged trial's loss) becomes the worst possible value,
    so ASHA ranks it last and Optuna records a bad trial instead of failing it on NaN."""
    value = metrics.get(metric)
    if isinstance(value, float) and not math.isfinite(value):
        return {**metrics, metric: -math.inf if mode == "max" else math.inf}
    return metrics


def train_trial(sample: dict[str, Any], *, arrays: CifarArrays, spec: StudySpec) -> None:
    """The Ray trainable: one trial of `spec` on the shared `arrays`."""
    config = trial_config(spec, sample)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(Path(directory) / CHECKPOINT_NAME)
    node_id = ray.get_runtime_context().get_node_id()
    every = spec.checkpoint.every

    def report(metrics: Metrics, state: StateThunk) -> None:
        row = _ray_safe({**metrics, "node_id": node_id}, spec.metric, spec.resolved_mode)
        last = metrics["epoch"] == config.epochs or metrics["diverged"]
        if metrics["epoch"] % every and not last:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(state(), Path(directory) / CHECKPOINT_NAME)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))

    fit(config, arrays, report=report, resume=resume)


class ParquetCallback(tune.Callback):
    """Writes every reported epoch and the trial table as the study runs (driver side)."""

    def __init__(self, recorder: StudyRecorder):
        self.recorder = recorder

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.recorder.record_epoch(trial.trial_id, trial.config, result)
        self._sync(trials)
        log.info(
            "trial %s epoch %d: val/top1 %.2f val/loss %.3f (%.1fs)%s",
            trial.trial_id,
            result["epoch"],
            result["val/top1"],
            result["val/loss"],
            result["time/epoch_s"],
            "  diverged" if result.get("diverged") else "",
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.recorder.record_complete(trial.trial_id)
        self._sync(trials)
        log.info("trial %s finished", trial.trial_id)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._sync(trials)
        log.warning(
            "trial %s errored: %s (details: %s)",
            trial.trial_id,
            _error_text(trial),
            trial.error_file,
        )

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.recorder.record_retry(trial.trial_id, _error_text(trial))
        self._sync(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._sync(trials)

    def _sync(self, trials: list[Trial]) -> None:
        self.recorder.record_states(
            {
                t.trial_id: (
                    t.status,
                    t.config,
                    _error_text(t) if t.status == Trial.ERROR else None,
                )
                for t in trials
            }
        )


def _error_text(trial: Trial) -> str | None:
    path = trial.error_file
    if not path or not Path(path).is_file():
        return None
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else None
