"""A study spec resolved once: everything the rest of a study needs that follows from the spec
alone, computed by :func:`resolve` where the spec is loaded and passed down (to the driver, to
the trial processes through Ray's object store, to the callback, to the views), so that nothing
downstream works it out again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cifartune.config.expand import asha_rungs, data_probes, expected_asha_epochs
from cifartune.config.spec import StudySpec, metric_mode, spec_hash, trial_config, trial_count
from cifartune.config.trial import DataConfig, TrialConfig


@dataclass(frozen=True)
class ResolvedSpec:
    """`spec` and what follows from it."""

    spec: StudySpec
    base: TrialConfig  # the configuration of a trial that samples nothing
    hash: str  # the study's identity (see spec_hash)
    mode: str  # "max" or "min": the direction in which `spec.metric` is better
    max_epochs: int  # the epochs a trial that is not stopped early runs
    rungs: tuple[int, ...]  # ASHA's; none under other schedulers
    trials: int
    # (where, data section) of the study's other data setups (see expand.data_probes)
    data_probes: tuple[tuple[str, DataConfig], ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def scheduler_stops(self) -> frozenset[int] | None:
        """Epochs after which a trial may end before its last: ASHA's rungs and its max_t
        (below a trial's epochs when ``scheduler.max_epochs`` says so); FIFO: none; PBT: its
        perturbation epochs (a trial is paused there); with a budget, any (None): the study
        may stop every trial after whichever epoch spends it."""
        sched = self.spec.scheduler
        if self.spec.budget is not None:
            return None
        if sched.name == "asha":
            return frozenset([*self.rungs, self.max_epochs])
        if sched.name == "pbt":
            return self.perturbation_epochs
        return frozenset()

    @property
    def perturbation_epochs(self) -> frozenset[int]:
        """PBT's: every ``scheduler.perturbation_interval``-th epoch before the last (none for
        another scheduler)."""
        sched = self.spec.scheduler
        if sched.name != "pbt":
            return frozenset()
        return frozenset(
            range(sched.perturbation_interval, self.base.epochs, sched.perturbation_interval)
        )

    def trial_config(self, sample: Mapping[str, Any]) -> TrialConfig:
        """The typed config of the trial that sampled `sample`."""
        return trial_config(self.spec, sample)


def resolve(spec: StudySpec) -> ResolvedSpec:
    """Work out once what follows from `spec` (a validated spec: see ``load_spec``)."""
    base = trial_config(spec, {})
    sched = spec.scheduler
    top = sched.max_epochs or base.epochs
    rungs = asha_rungs(sched.grace_period, sched.reduction_factor, top)
    return ResolvedSpec(
        spec=spec,
        base=base,
        hash=spec_hash(spec),
        mode=metric_mode(spec.metric, spec.mode),
        max_epochs=top,
        rungs=tuple(rungs) if sched.name == "asha" else (),
        trials=trial_count(spec),
        data_probes=tuple(data_probes(spec, base.data)),
    )


@dataclass(frozen=True)
class Plan:
    """What a study will run, computed without starting Ray (``cifartune run --dry-run``)."""

    trials: int
    epochs_per_trial: int
    worst_case_epochs: int
    expected_epochs: float | None  # under ASHA
    rungs: list[int]
    concurrent: int
    waves: int
    bottleneck: str


def plan(resolved: ResolvedSpec, *, cpus: float, gpus: float) -> Plan:
    """Count trials and epochs and pack trials onto `cpus` and `gpus` (one machine or cluster)."""
    spec, trials, epochs = resolved.spec, resolved.trials, resolved.max_epochs
    res = spec.resources
    limits = {"CPUs": math.floor(cpus / res.cpus + 1e-9)}
    if res.gpus > 0:
        limits["GPUs"] = math.floor(gpus / res.gpus + 1e-9)
    if res.max_concurrent is not None:
        limits["max_concurrent"] = res.max_concurrent
    bottleneck = min(limits, key=lambda k: limits[k])
    concurrent = min(limits[bottleneck], trials)
    expected = None
    if spec.scheduler.name == "asha":
        eta = spec.scheduler.reduction_factor
        expected = expected_asha_epochs(resolved.rungs, epochs, eta, trials)
    return Plan(
        trials=trials,
        epochs_per_trial=epochs,
        worst_case_epochs=trials * epochs,
        expected_epochs=expected,
        rungs=list(resolved.rungs),
        concurrent=concurrent,
        waves=math.ceil(trials / concurrent) if concurrent else 0,
        bottleneck=bottleneck,
    )
