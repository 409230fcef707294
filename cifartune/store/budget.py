"""What a study has spent against its budget, counted from its results directory alone, so a
resumed study spends what is left, not a new budget; and the record that a limit was reached.

- wall: the time its drivers ran (study.json's ``runs``: each from its start to its end or, for
  a driver that was killed, its last heartbeat, at most HEARTBEAT_S seconds short);
- CPU- and GPU-hours: what the trials held while training (each epoch's time times the spec's
  ``resources``), from the epoch rows, as the trial table's ``reserved_*_s``;
- target: the best value any epoch reached.

``budget.json`` is written once, when a limit is first reached, and says which.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cifartune.config.sections import BudgetSpec
from cifartune.config.spec import metric_mode
from cifartune.storage import Location
from cifartune.store.layout import BUDGET_FILE
from cifartune.store.summary import metric_value
from cifartune.store.tables import atomic_write_text


@dataclass
class BudgetUse:
    """What a study spent: wall, CPU and GPU seconds, and the best value of the target's metric
    (None before any)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    best: float | None = None

    def add_epoch(
        self, seconds: float, value: float, *, cpus: float, gpus: float, mode: str
    ) -> None:
        if math.isfinite(seconds):
            self.cpu_s += seconds * cpus
            self.gpu_s += seconds * gpus
        if math.isfinite(value) and (
            self.best is None or (value > self.best if mode == "max" else value < self.best)
        ):
            self.best = value


def runs_wall_seconds(runs: Sequence[Mapping[str, Any]]) -> float:
    """Seconds the study's drivers ran, from study.json's ``runs``."""
    total = 0.0
    for run in runs:
        start, until = run.get("started"), run.get("until")
        if start and until:
            delta = dt.datetime.fromisoformat(until) - dt.datetime.fromisoformat(start)
            total += max(delta.total_seconds(), 0.0)
    return total


def target_metric(budget: BudgetSpec) -> tuple[str, float] | None:
    return next(iter(budget.target.items())) if budget.target else None


def budget_use(
    budget: BudgetSpec,
    runs: Sequence[Mapping[str, Any]],
    epochs: Sequence[Mapping[str, Any]],
    *,
    cpus: float,
    gpus: float,
) -> BudgetUse:
    """What `runs` (study.json's) and the epoch rows spent against `budget`."""
    use = BudgetUse(wall_s=runs_wall_seconds(runs))
    target = target_metric(budget)
    metric = target[0] if target else ""
    mode = metric_mode(metric)
    for row in epochs:
        value = metric_value(row.get(metric)) if target else math.nan
        use.add_epoch(metric_value(row.get("time/epoch_s")), value, cpus=cpus, gpus=gpus, mode=mode)
    return use


def reached(budget: BudgetSpec, use: BudgetUse) -> str | None:
    """The limit `use` reached, said as the study's stop reason; None while none is."""
    wall = budget.wall_seconds
    if wall is not None and use.wall_s >= wall:
        return f"budget: wall {budget.wall} reached ({_hours(use.wall_s)} spent)"
    if budget.gpu_hours is not None and use.gpu_s >= budget.gpu_hours * 3600:
        return f"budget: {budget.gpu_hours:g} GPU-hours reached ({use.gpu_s / 3600:.2f} held)"
    if budget.cpu_hours is not None and use.cpu_s >= budget.cpu_hours * 3600:
        return f"budget: {budget.cpu_hours:g} CPU-hours reached ({use.cpu_s / 3600:.2f} held)"
    target = target_metric(budget)
    if target is not None and use.best is not None:
        metric, goal = target
        hit = use.best >= goal if metric_mode(metric) == "max" else use.best <= goal
        if hit:
            return f"budget: target {metric} {goal:g} reached ({use.best:.4g})"
    return None


def left(budget: BudgetSpec, use: BudgetUse) -> list[str]:
    """Each limit as 'spent / limit (left)', for status views."""
    parts = []
    if budget.wall_seconds is not None:
        rest = max(budget.wall_seconds - use.wall_s, 0.0)
        parts.append(f"wall {_hours(use.wall_s)} / {budget.wall} ({_hours(rest)} left)")
    for name, spent, limit in (
        ("GPU-hours", use.gpu_s / 3600, budget.gpu_hours),
        ("CPU-hours", use.cpu_s / 3600, budget.cpu_hours),
    ):
        if limit is not None:
            parts.append(f"{name} {spent:.2f} / {limit:g} ({max(limit - spent, 0):.2f} left)")
    target = target_metric(budget)
    if target is not None:
        best = "none yet" if use.best is None else f"{use.best:.4g}"
        parts.append(f"target {target[0]} {target[1]:g} (best so far {best})")
    return parts


def record_reached(directory: Location, reason: str, when: str) -> None:
    """budget.json, written once: the first limit reached, and when."""
    path = directory / BUDGET_FILE
    if not path.is_file():
        atomic_write_text(path, json.dumps({"reason": reason, "at": when}, indent=2))


def read_reached(directory: Location) -> str | None:
    """The limit the study reached (budget.json), or None."""
    path = directory / BUDGET_FILE
    return str(json.loads(path.read_text())["reason"]) if path.is_file() else None


def _hours(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"
