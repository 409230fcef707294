"""The search space, searcher and scheduler a study spec asks Ray Tune for."""

from __future__ import annotations

import functools
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import (
    BasicVariantGenerator,
    ConcurrencyLimiter,
    SearchAlgorithm,
    Searcher,
)

from cifartune.config.resolved import ResolvedSpec
from cifartune.config.spec import SEED_KEY, VARIANT_KEY, StudySpec
from cifartune.storage import Location
from cifartune.store.epochs import metric_by_epoch
from cifartune.study.epoch_search import EpochOptunaSearch
from cifartune.study.pbt import EpochPBT, ray_domain


def search_space(spec: StudySpec) -> dict[str, Any]:
    """The Ray ``param_space``: lists become grid axes (categorical choices under Optuna, which
    cannot take ``grid_search``), distributions their Tune namesakes, repeats a seed grid, and
    PBT's mutations a first value drawn for each member of the population."""
    optuna = spec.search.algorithm == "optuna"

    def axis(values: list[Any]) -> Any:
        return tune.choice(values) if optuna else tune.grid_search(values)

    space: dict[str, Any] = {}
    if spec.variants:
        space[VARIANT_KEY] = axis(list(spec.variants))
    for key, dim in spec.space.items():
        space[key] = axis(dim) if isinstance(dim, list) else ray_domain(dim)
    if spec.scheduler.name == "pbt":
        space.update({key: ray_domain(dim) for key, dim in spec.scheduler.mutations.items()})
    if spec.repeats > 1:
        base_seed = int(spec.base.get(SEED_KEY, 0))
        space[SEED_KEY] = tune.grid_search([base_seed + i for i in range(spec.repeats)])
    return space


def search_algorithm(resolved: ResolvedSpec, directory: Location) -> SearchAlgorithm | Searcher:
    """The searcher, with ``resources.max_concurrent`` applied to it: Ray ignores the Tuner's
    ``max_concurrent_trials`` for a variant generator built by hand, so it is given here. Optuna
    is told each epoch's value and each trial's end the way the study reads them
    (:mod:`.epoch_search`), from the results in `directory` where it missed them."""
    spec = resolved.spec
    # Under PBT the scheduler applies the limit to running trials (see EpochPBT).
    limit = 0 if spec.scheduler.name == "pbt" else spec.resources.max_concurrent or 0
    if spec.search.algorithm == "optuna":
        searcher = EpochOptunaSearch(
            metric=spec.metric,
            mode=resolved.mode,
            seed=spec.search.seed,
            max_epochs=resolved.base.epochs,
            history=functools.partial(metric_by_epoch, directory.uri, spec.metric),
        )
        return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit else searcher
    # constant_grid_search: one random draw per sample, shared by every grid point of it, so
    # the seeds of a repeated configuration really repeat it (Ray's default draws anew for each
    # seed, turning "mean over repeats" into a best-of-N).
    return BasicVariantGenerator(
        max_concurrent=limit,
        random_state=spec.search.seed,
        constant_grid_search=spec.search.algorithm == "random",
    )


def scheduler(resolved: ResolvedSpec) -> TrialScheduler:
    sched = resolved.spec.scheduler
    if sched.name == "pbt":
        return EpochPBT(resolved)
    if sched.name == "asha":
        # Our epoch, not Ray's training_iteration: a trial resumed from our own checkpoint
        # starts a new Ray iteration count, but its epochs go on.
        return ASHAScheduler(
            time_attr="epoch",
            max_t=resolved.max_epochs,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
    return FIFOScheduler()
