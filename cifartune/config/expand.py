"""What a study spec expands to, worked out without Ray or data: its grid points, ASHA's rungs
and expected epochs, and the data setups its trials can have.
:func:`cifartune.config.resolved.resolve` calls these once per spec.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from cifartune.config.distributions import probe_values
from cifartune.config.spec import VARIANT_KEY, StudySpec, grid_axes, trial_config
from cifartune.config.trial import DataConfig
from cifartune.errors import ConfigError


def grid_points(spec: StudySpec) -> Iterator[dict[str, Any]]:
    axes = grid_axes(spec)
    for values in itertools.product(*axes.values()):
        yield dict(zip(axes, values, strict=True))


def asha_rungs(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """Epochs at which ASHA compares trials: grace * eta^k below max epochs."""
    rungs, rung = [], float(grace_period)
    while rung < max_epochs:
        rungs.append(int(rung))
        rung *= reduction_factor
    return rungs


def expected_asha_epochs(
    rungs: Sequence[int], max_epochs: int, reduction_factor: float, trials: int
) -> float:
    """Epochs spent if ASHA promotes exactly 1/eta of the trials at each rung (its target)."""
    total, surviving, done = 0.0, float(trials), 0
    for rung in [*rungs, max_epochs]:
        total += surviving * (rung - done)
        done = rung
        surviving /= reduction_factor
    return total


def data_probes(spec: StudySpec, base: DataConfig) -> list[tuple[str, DataConfig]]:
    """(where, data section) of every distinct data setup the study's trials can have, other
    than `base`'s (the data of a trial that samples nothing): for
    :func:`cifartune.engine.data.describe_source` to check against the dataset's size.

    The data keys of a trial come from its variant and from the ``space.data.*`` dimensions
    together (a variant's val_size with a grid's train_subset), so their product is probed:
    each variant times each value or bound of each data dimension. Kept apart from the
    checks that need no data (``status``, ``submit`` from a laptop).
    """
    axes: dict[str, list[Any]] = {VARIANT_KEY: list(spec.variants)} if spec.variants else {}
    axes.update({k: probe_values(d) for k, d in spec.space.items() if k.startswith("data.")})
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
