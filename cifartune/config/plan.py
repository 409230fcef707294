"""What a study spec expands to, counted without Ray: its grid points, trials, epochs, ASHA's
rungs and expected epochs, the data setups its trials can have, and how its trials pack onto a
machine (``cifartune run --dry-run``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cifartune.config.distributions import CategoricalDistribution as CategoricalDistribution
from cifartune.config.distributions import FloatDistribution as FloatDistribution
from cifartune.config.distributions import IntDistribution as IntDistribution
from cifartune.config.distributions import probe_values
from cifartune.config.spec import SEED_KEY, VARIANT_KEY, StudySpec, trial_config
from cifartune.config.trial import DataConfig, TrialConfig, build_trial_config
from cifartune.errors import ConfigError


def _grid_axes(spec: StudySpec) -> dict[str, list[Any]]:
    """The lists that multiply into trials: variants, grid dimensions, seeds."""
    axes: dict[str, list[Any]] = {}
    if spec.variants:
        axes[VARIANT_KEY] = list(spec.variants)
    axes.update({k: v for k, v in spec.space.items() if isinstance(v, list)})
    if spec.repeats > 1:
        base_seed = int(spec.base.get(SEED_KEY, 0))
        axes[SEED_KEY] = [base_seed + i for i in range(spec.repeats)]
    return axes


def grid_points(spec: StudySpec) -> Iterator[dict[str, Any]]:
    axes = _grid_axes(spec)
    for values in itertools.product(*axes.values()):
        yield dict(zip(axes, values, strict=True))


def data_probes(spec: StudySpec) -> list[tuple[str, DataConfig]]:
    """(where, data section) of every distinct data setup the study's trials can have, other
    than base's: for :func:`cifartune.data.describe_source` to check against the dataset's size
    (``describe_source(trial_config(spec, {}).data, also=data_probes(spec))``).

    The data keys of a trial come from its variant and from the ``space.data.*`` dimensions
    together (a variant's val_size with a grid's train_subset), so their product is probed:
    each variant times each value or bound of each data dimension. Kept out of
    :func:`build_spec`, which runs without the data (``status``, ``submit`` from a laptop).
    """
    axes: dict[str, list[Any]] = {VARIANT_KEY: list(spec.variants)} if spec.variants else {}
    axes.update({k: probe_values(d) for k, d in spec.space.items() if k.startswith("data.")})
    base = trial_config(spec, {}).data
    seen: dict[DataConfig, str] = {base: "base"}
    problems = []
    for values in itertools.product(*axes.values()):
        sample = dict(zip(axes, values, strict=True))
        where = " with ".join(
            f"variants.{v}" if k == VARIANT_KEY else f"space.{k}" for k, v in sample.items()
        )
        try:
            seen.setdefault(trial_config(spec, sample).data, where)
        except ConfigError as exc:  # each value is valid alone (build_spec), not this mix
            problems.append(f"{where}: {exc}".replace("\n", f"\n{where}: "))
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return [(where, data) for data, where in seen.items() if where != "base"]


def trial_count(spec: StudySpec) -> int:
    grid = math.prod(len(v) for v in _grid_axes(spec).values())
    if spec.search.algorithm == "optuna":
        return spec.search.samples
    return grid * spec.search.samples


def max_epochs(spec: StudySpec, base: TrialConfig | None = None) -> int:
    return spec.scheduler.max_epochs or (base or build_trial_config(spec.base)).epochs


def asha_rungs(spec: StudySpec) -> list[int]:
    """Epochs at which ASHA compares trials: grace * eta^k below max epochs."""
    top = max_epochs(spec)
    rungs, rung = [], float(spec.scheduler.grace_period)
    while rung < top:
        rungs.append(int(rung))
        rung *= spec.scheduler.reduction_factor
    return rungs


def expected_asha_epochs(spec: StudySpec, trials: int) -> float:
    """Epochs spent if ASHA promotes exactly 1/eta of the trials at each rung (its target)."""
    top = max_epochs(spec)
    eta = spec.scheduler.reduction_factor
    total, surviving, done = 0.0, float(trials), 0
    for rung in [*asha_rungs(spec), top]:
        total += surviving * (rung - done)
        done = rung
        surviving /= eta
    return total


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


def plan(spec: StudySpec, *, cpus: float, gpus: float) -> Plan:
    """Count trials and epochs and pack trials onto `cpus` and `gpus` (one machine or cluster)."""
    trials = trial_count(spec)
    epochs = max_epochs(spec)
    res = spec.resources
    limits = {"CPUs": math.floor(cpus / res.cpus + 1e-9)}
    if res.gpus > 0:
        limits["GPUs"] = math.floor(gpus / res.gpus + 1e-9)
    if res.max_concurrent is not None:
        limits["max_concurrent"] = res.max_concurrent
    bottleneck = min(limits, key=lambda k: limits[k])
    concurrent = min(limits[bottleneck], trials)
    asha = spec.scheduler.name == "asha"
    return Plan(
        trials=trials,
        epochs_per_trial=epochs,
        worst_case_epochs=trials * epochs,
        expected_epochs=expected_asha_epochs(spec, trials) if asha else None,
        rungs=asha_rungs(spec) if asha else [],
        concurrent=concurrent,
        waves=math.ceil(trials / concurrent) if concurrent else 0,
        bottleneck=bottleneck,
    )
