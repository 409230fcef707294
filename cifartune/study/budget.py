"""A study's budget, enforced while it runs (the limits and their accounting are in
:mod:`cifartune.store.budget`, counted from the results directory).

:class:`BudgetGuard` knows what was spent: what the files say when it is first asked in this
driver (the earlier drivers' time, the epochs trained), plus this driver's time and each epoch
reported since. :class:`BudgetScheduler` wraps the study's scheduler: once a limit is reached it
stops each running trial at its next epoch (its files are written before Ray hears of an epoch:
with a budget, every epoch may be a trial's last) and stops the waiting ones before they start;
once none runs, :class:`BudgetStopper` ends the experiment. The guard's state is rebuilt from
the files in each driver (Tuner.restore unpickles these objects as they were at its last
snapshot), and the first limit reached is written to budget.json.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from typing import Any

from ray.tune import Stopper
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from cifartune.config.resolved import ResolvedSpec
from cifartune.config.sections import BudgetSpec
from cifartune.storage import Location
from cifartune.store.budget import BudgetUse, budget_use, reached, record_reached, target_metric
from cifartune.store.epochs import read_study_epochs
from cifartune.store.metadata import StudyMetadata, now
from cifartune.store.summary import metric_value

log = logging.getLogger(__name__)


class BudgetGuard:
    """What the study has spent against `budget`, and whether a limit is reached."""

    def __init__(self, budget: BudgetSpec, directory: str, *, cpus: float, gpus: float) -> None:
        self.budget, self.directory = budget, directory
        self.cpus, self.gpus = cpus, gpus
        target = target_metric(budget)
        self.metric = target[0] if target else None
        self._use: BudgetUse | None = None  # this driver's: rebuilt from the files (see module)
        self._prior_wall = 0.0  # the earlier drivers' time
        self._started = 0.0  # when this driver started (Unix seconds)
        self._counted: set[tuple[str, int]] = set()  # (trial, epoch) in the use already
        self.reason: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # What this driver counted means nothing to the next: it reads the files again.
        return {**self.__dict__, "_use": None, "_counted": set(), "reason": None}

    def _load(self) -> BudgetUse:
        if self._use is None:
            location = Location.of(self.directory)
            runs = (StudyMetadata(location).read() or {}).get("runs", [])
            epochs = read_study_epochs(location)
            rows = epochs.to_dict("records")
            self._use = budget_use(self.budget, runs[:-1], rows, cpus=self.cpus, gpus=self.gpus)
            self._prior_wall = self._use.wall_s
            current = runs[-1]["started"] if runs else now()
            self._started = dt.datetime.fromisoformat(current).timestamp()
            self._counted = {(str(r["trial_id"]), int(r["epoch"])) for r in rows}
        return self._use

    def observe(self, trial_id: str, result: dict[str, Any]) -> None:
        """An epoch a trial reported: its time and value count (once, also when a resumed
        trial reports its last epoch again)."""
        use = self._load()
        key = (trial_id, int(result.get("epoch", 0)))
        if key in self._counted:
            return
        self._counted.add(key)
        value = metric_value(result.get(self.metric)) if self.metric else math.nan
        mode = "min" if (self.metric or "").endswith("loss") else "max"
        seconds = metric_value(result.get("time/epoch_s"))
        use.add_epoch(seconds, value, cpus=self.cpus, gpus=self.gpus, mode=mode)

    def exhausted(self) -> str | None:
        """The limit reached (its stop reason), recorded in budget.json the first time."""
        if self.reason is None:
            use = self._load()
            use.wall_s = self._prior_wall + max(time.time() - self._started, 0.0)
            self.reason = reached(self.budget, use)
            if self.reason is not None:
                log.warning("%s: no new trial starts; running trials stop after their epoch",
                            self.reason)  # fmt: skip
                record_reached(Location.of(self.directory), self.reason, now())
        return self.reason


class BudgetScheduler(TrialScheduler):
    """The study's scheduler, until the budget is spent (see the module)."""

    def __init__(self, inner: TrialScheduler, guard: BudgetGuard) -> None:
        super().__init__()
        self.inner, self.guard = inner, guard
        self.idle = False  # the budget is spent and no trial runs: the stopper ends the study

    def __getattr__(self, name: str) -> Any:  # what Ray reads of a scheduler, the inner one's
        if name in ("inner", "guard"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def metric(self) -> Any:
        return self.inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return bool(self.inner.supports_buffered_results)

    def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
        return bool(self.inner.set_search_properties(metric, mode, **spec))

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self.guard.observe(trial.trial_id, result)
        if self.guard.exhausted():
            return TrialScheduler.STOP
        return str(self.inner.on_trial_result(tune_controller, trial, result))

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self.inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if not self.guard.exhausted():
            return self.inner.choose_trial_to_run(tune_controller)
        # Once the budget is spent (looked at every step, until none runs): Ray would start the
        # trials waiting (PENDING, or PAUSED by PBT) whatever this returns, so they are stopped
        # before they start.
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status in (Trial.PENDING, Trial.PAUSED):
                # A trial that never started has no directory name yet, and Ray's result grid
                # at the end of fit fails on one without it.
                trial.init_local_path()
                tune_controller.stop_trial(trial)
        self.idle = not any(t.status == Trial.RUNNING for t in trials)
        return None

    def debug_string(self) -> str:
        return str(self.inner.debug_string())

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.inner.restore(checkpoint_path)


class BudgetStopper(Stopper):
    """Ends the experiment once the budget is spent and its scheduler runs no trial (trials
    that never started stay unstarted; Ray marks them terminated)."""

    def __init__(self, scheduler: BudgetScheduler) -> None:
        self.scheduler = scheduler

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # a running trial is stopped by the scheduler, after its epoch

    def stop_all(self) -> bool:
        return self.scheduler.idle


def budgeted(inner: TrialScheduler, resolved: ResolvedSpec, directory: Location) -> tuple[
    TrialScheduler, Stopper | None
]:  # fmt: skip
    """The study's scheduler and stopper: `inner` and none, or wrapped by its budget."""
    budget = resolved.spec.budget
    if budget is None:
        return inner, None
    resources = resolved.spec.resources
    guard = BudgetGuard(budget, directory.uri, cpus=resources.cpus, gpus=resources.gpus)
    scheduler = BudgetScheduler(inner, guard)
    return scheduler, BudgetStopper(scheduler)
