"""Population-based training on cifartune's epochs and files.

Ray's :class:`~ray.tune.schedulers.PopulationBasedTraining`, synchronous: the whole population
pauses at every ``scheduler.perturbation_interval``-th epoch; then the bottom quantile takes the
state of a top trial and perturbs its hyperparameters (``scheduler.mutations``). Every trial
that exploits another therefore takes the donor's state at the epoch it is itself at, so each
trial's epochs are numbered once, and its lineage is a schedule of hyperparameters by epoch.

What Ray hands from a donor to a recipient is a pointer (a tiny checkpoint: trial and epoch),
reported at each perturbation epoch; the state itself is the donor's checkpoint of that epoch,
kept in the results directory (:meth:`cifartune.store.trial_writer.TrialWriter.exploit`), so
nothing depends on what Ray's snapshot kept. After a restore, Ray's PBT knows nothing of the
population's progress: the driver tells :class:`EpochPBT` the first barrier the population has
not passed (:func:`cifartune.store.lineage.open_barrier`), and a member resumed from its own
checkpoint at a perturbation epoch reports that epoch again, so that members paused at an
interrupted barrier meet there with the ones still on their way.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from cifartune.config.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from cifartune.config.resolved import ResolvedSpec

POINTER_FILE = "cifartune-state.json"
# In a result a member reports again when it resumes at a perturbation epoch (see EpochPBT).
REPEATED = "repeated"


def ray_domain(dim: Any) -> Any:
    """A spec dimension as Ray Tune samples it: a list as choices, distributions as their Tune
    namesakes (Tune's integer ranges exclude `high`; Optuna's, and ours, include it)."""
    if isinstance(dim, list):
        return tune.choice(dim)
    if isinstance(dim, CategoricalDistribution):
        return tune.choice(dim.choices)
    if isinstance(dim, FloatDistribution):
        return (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)
    return (tune.lograndint if dim.log else tune.randint)(dim.low, dim.high + 1)


def _mutation(dim: Any) -> Any:
    """How PBT explores a key: a list of choices moves to a neighbour, a range is perturbed."""
    if isinstance(dim, list):
        return list(dim)
    if isinstance(dim, CategoricalDistribution):
        return list(dim.choices)
    return ray_domain(dim)


def within_bounds(
    config: dict[str, Any], bounds: Mapping[str, tuple[float, float, bool]]
) -> dict[str, Any]:
    """PBT's explored config with every range kept inside the spec's (Ray multiplies by 0.8 or
    1.2 without a bound), integers rounded."""
    for key, (low, high, integer) in bounds.items():
        if key in config:
            value = min(max(config[key], low), high)
            config[key] = round(value) if integer else float(value)
    return config


class EpochPBT(PopulationBasedTraining):
    """Synchronous PBT that perturbs at multiples of the interval, never at the last epoch, and
    whose population meets again after a restore (see the module)."""

    def __init__(self, resolved: ResolvedSpec) -> None:
        sched = resolved.spec.scheduler
        bounds = {
            key: (float(dim.low), float(dim.high), isinstance(dim, IntDistribution))
            for key, dim in sched.mutations.items()
            if isinstance(dim, FloatDistribution | IntDistribution)
        }
        super().__init__(
            time_attr="epoch",
            perturbation_interval=sched.perturbation_interval,
            hyperparam_mutations={k: _mutation(d) for k, d in sched.mutations.items()},
            quantile_fraction=sched.quantile_fraction,
            resample_probability=sched.resample_probability,
            custom_explore_fn=functools.partial(within_bounds, bounds=bounds),
            log_config=False,
            synch=True,
        )
        self.perturbation_epochs = resolved.perturbation_epochs
        self.max_running = resolved.spec.resources.max_concurrent or 0

    def resume_at(self, barrier: int | None) -> None:
        """A restored study's population meets first at `barrier` (the first perturbation
        epoch it has not passed, from the results directory; None: none is left). Ray restores
        this scheduler as it was built, before any trial ran: without this, it would wait at
        the first perturbation epoch, which members paused at a later one never report again."""
        self._next_perturbation_sync = (
            barrier if barrier is not None else max(self.perturbation_epochs, default=0) + 1
        )

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        epoch = int(result.get("epoch", 0))
        # Not a barrier, or one the population has passed: a member that resumes from a
        # perturbation epoch reports it again (see the trainable), and goes on past a barrier
        # already met.
        if epoch not in self.perturbation_epochs or epoch < self._next_perturbation_sync:
            return TrialScheduler.CONTINUE
        state = self._trial_state[trial]
        # A trial restored with the experiment reports from its checkpoint on: its interval
        # counts from the perturbation epoch before this one.
        state.last_perturbation_time = max(
            state.last_perturbation_time, epoch - int(self._perturbation_interval)
        )
        return str(super().on_trial_result(tune_controller, trial, result))

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        # ``resources.max_concurrent`` bounds the trials running at once, not the live ones
        # (the searcher's limit): the whole population must be live to meet at the barrier.
        running = sum(t.status == Trial.RUNNING for t in tune_controller.get_trials())
        if self.max_running and running >= self.max_running:
            return None
        chosen = super().choose_trial_to_run(tune_controller)
        if chosen is None and running == 0 and self._meet_without_report(tune_controller):
            chosen = super().choose_trial_to_run(tune_controller)
        return chosen

    def _meet_without_report(self, tune_controller: Any) -> bool:
        """Every live member waits at the barrier and none runs: the one that would have
        arrived last ended instead (it failed), and Ray meets only on a report. The barrier is
        met on the last waiting member's result, as if it had arrived last (else the study
        waits forever, a CPU busy)."""
        waiting = [t for t in tune_controller.get_live_trials() if t.status == Trial.PAUSED]
        states = [self._trial_state[t] for t in waiting]
        if not waiting or any(
            s.last_result is None or s.last_train_time < self._next_perturbation_sync
            for s in states
        ):
            return False
        super().on_trial_result(tune_controller, waiting[-1], dict(states[-1].last_result or {}))
        return True


@contextmanager
def pointer(trial_id: str, epoch: int) -> Iterator[Any]:
    """The checkpoint a trial reports to Ray at a perturbation epoch: which state (trial and
    epoch) a recipient takes; the state is in the results directory."""
    with tempfile.TemporaryDirectory(prefix="cifartune-pointer-") as folder:
        (Path(folder) / POINTER_FILE).write_text(json.dumps({"trial": trial_id, "epoch": epoch}))
        yield tune.Checkpoint.from_directory(folder)


def pointed(checkpoint: Any) -> tuple[str, int] | None:
    """The (trial, epoch) a checkpoint from Ray points to; None for none."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / POINTER_FILE
        if not path.is_file():
            return None
        content = json.loads(path.read_text())
    return str(content["trial"]), int(content["epoch"])
