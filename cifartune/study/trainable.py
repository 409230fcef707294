"""The Ray trainable, run in the trial processes: a thin shell around
:func:`cifartune.engine.loop.fit`: sampled flat config in, typed config built by the spec,
per-epoch ``tune.report``; checkpoints and epoch rows go to the results directory
(:mod:`cifartune.store.trial_writer`), not through Ray, so resuming never depends on which
checkpoints Ray's snapshot remembers.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import ray
from ray import tune

from cifartune.config.base import flatten
from cifartune.config.resolved import ResolvedSpec
from cifartune.engine.data import CifarArrays
from cifartune.engine.effective import effective_settings
from cifartune.engine.loop import CpuClock, fit
from cifartune.engine.run import Metrics, StateThunk
from cifartune.engine.splits import device_data
from cifartune.errors import CifartuneError
from cifartune.storage import Location
from cifartune.store.checkpoints import record_failure
from cifartune.store.columns import effective_columns, trial_keys
from cifartune.store.trial_writer import TrialWriter
from cifartune.study.pbt import REPEATED, pointed, pointer

log = logging.getLogger(__name__)


def _ray_safe(metrics: Metrics, metric: str, mode: str) -> Metrics:
    """A non-finite selection metric (a diverged trial's loss) becomes the worst possible value,
    so ASHA ranks it last and Optuna records a bad trial instead of failing it on NaN."""
    value = metrics.get(metric)
    if isinstance(value, float) and not math.isfinite(value):
        return {**metrics, metric: -math.inf if mode == "max" else math.inf}
    return metrics


def train_trial(
    sample: dict[str, Any], *, arrays: CifarArrays, spec: ResolvedSpec, directory: str
) -> None:
    """The Ray trainable: one trial of `spec` on the shared `arrays`.

    It resumes from its own latest checkpoint in the results directory (a retry after a crash,
    or a resumed study), or, under PBT, from the state of the trial Ray's checkpoint points to
    (an exploit: see :mod:`.pbt`); writes its checkpoints and epoch rows there, and reports each
    epoch to Ray for the scheduler and searcher. A config or data error (no retry can fix it)
    ends the trial at once: it is recorded in the trial's files and the trial returns, so Ray
    does not retry it; the driver reads it back as the trial's error.
    """
    trial_id = tune.get_context().get_trial_id()
    location = Location.of(directory)
    pbt = spec.spec.scheduler.name == "pbt"
    # PBT's perturbation epochs: a checkpoint there is kept for other trials, and pointed to.
    perturbations = spec.perturbation_epochs
    reported = False
    try:
        config = spec.trial_config(sample)
        flat = flatten(config)
        data = device_data(arrays, config)
        # A PBT trial's hyperparameters change: it is its own group (configuration).
        group = trial_id if pbt else None
        writer = TrialWriter(
            location,
            trial_id,
            sample=sample,
            flat_config=flat,
            keys=trial_keys(trial_id, flat, sample, study=spec.name, group=group),
            metric=spec.metric,
            mode=spec.mode,
            every=spec.spec.checkpoint.every,
            stops_at=spec.scheduler_stops,
            keep=perturbations,
            extras={
                "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                **effective_columns(effective_settings(config, data)),
            },
        )
        cpu = CpuClock()

        def tell_ray(metrics: Metrics, **extra: Any) -> None:
            """An epoch's result for the scheduler and searcher; at a perturbation epoch with
            the pointer to this trial's state there, for another trial to take."""
            safe = {**_ray_safe(metrics, spec.metric, spec.mode), **extra}
            epoch = int(metrics["epoch"])
            if epoch in perturbations:
                with pointer(trial_id, epoch) as checkpoint:
                    tune.report(safe, checkpoint=checkpoint)
            else:
                tune.report(safe)

        def report(metrics: Metrics, state: StateThunk) -> None:
            nonlocal reported
            cpu.measure(metrics)
            writer.record(metrics, state)
            tell_ray(metrics)
            reported = True

        donor = pointed(tune.get_checkpoint()) if pbt else None
        with writer:
            start: dict[str, Any] | None
            if donor is not None and donor[0] != trial_id and not writer.exploited(*donor):
                start = writer.exploit(*donor)
            else:
                start = writer.resume()
                if start is not None and int(start["epoch"]) in perturbations:
                    # Resumed at a barrier: the population may not have met there yet (the
                    # study was interrupted while this trial waited), so it arrives again; the
                    # scheduler lets it go on at once past a barrier already met.
                    tell_ray(start["history"][-1], **{REPEATED: True})
            result = fit(config, data, report=report, resume=start)
    except CifartuneError as exc:
        log.error("trial %s cannot run: %s", trial_id, exc)
        record_failure(location, trial_id, f"{type(exc).__name__}: {exc}")
        return
    if not reported and result.history:
        # Resumed from a checkpoint of its last epoch (it finished after Ray's last snapshot):
        # nothing left to train, but the scheduler and searcher still get its final result.
        tune.report(_ray_safe(result.history[-1], spec.metric, spec.mode))
