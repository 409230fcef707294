"""The terminal view of a study (``cifartune status``, ``--watch``): trials by state, epochs done
and planned, best so far, an ETA. It reads the results directory only, so it works from another
process or machine, during the study or after.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from cifartune.config.sections import BudgetSpec
from cifartune.errors import CifartuneError
from cifartune.store.budget import budget_use, left
from cifartune.store.epochs import EpochReader
from cifartune.store.study_data import StudyData, read_study, status_columns
from cifartune.store.tables import seconds_between
from cifartune.store.trial_states import FINAL_STATES

log = logging.getLogger(__name__)
BAR_WIDTH = 30
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase display: plain ANSI, any ssh terminal


def best_trial(study: StudyData) -> pd.Series | None:
    """The trial row with the best `best_metric` so far, or None before any."""
    scored = study.trials.dropna(subset=["best_metric"])
    if scored.empty:
        return None
    values = pd.to_numeric(scored["best_metric"])
    return scored.loc[values.idxmax() if study.mode == "max" else values.idxmin()]


def best_line(study: StudyData) -> str:
    """'best so far: ...' with the searched values (under PBT, those in force at the best
    epoch: see StudyData); empty before any result."""
    best = best_trial(study)
    if best is None:
        return ""
    factors = " ".join(f"{k.removeprefix('config/')}={_short(best[k])}" for k in study.factor_keys)
    if study.has_variants():
        factors = f"variant={best['variant']} {factors}"
    return (
        f"best so far: {study.metric} {best['best_metric']:.3f} (trial {best['trial_id']}, "
        f"epoch {int(best['best_epoch'])}) {factors}".rstrip()
    )


def _planned(study: StudyData) -> tuple[int, int, bool]:
    """Trials the spec runs, epochs a new trial runs, and whether ASHA may stop trials early
    (then the epochs left are a worst case). Falls back to the trial table alone when the spec
    no longer builds (a study made by an older cifartune)."""
    from cifartune.config.resolved import resolve
    from cifartune.config.validation import build_spec

    trials = study.trials
    epochs = int(trials["max_epochs"].max()) if len(trials) else 0
    try:
        resolved = resolve(build_spec(study.spec))
    except CifartuneError as exc:
        log.debug("spec.yaml does not build (%s); planning from the trial table", exc)
        return len(trials), epochs, False
    return resolved.trials, resolved.max_epochs, bool(resolved.rungs)


def is_live(study: StudyData) -> bool:
    """Whether a driver is still running the study (study.json says running and its driver is
    not gone: a killed driver leaves that state behind)."""
    from cifartune.store.metadata import driver_gone, lock_is_free

    if study.meta.get("state") != "running":
        return False
    return not driver_gone(study.meta, lock_free=lock_is_free(study.directory))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def budget_lines(study: StudyData, now: dt.datetime, *, live: bool) -> list[str]:
    """The study's stop reason where its budget ended it, and what it spent of each limit and
    what is left (a running driver's time counted up to `now`)."""
    lines = []
    if study.meta.get("stop_reason"):
        lines.append(f"stopped: {study.meta['stop_reason']}")
    if not study.spec.get("budget"):
        return lines
    try:
        budget = BudgetSpec.model_validate(study.spec["budget"])
    except ValueError as exc:
        log.debug("spec.yaml's budget does not validate (%s)", exc)
        return lines
    runs = [dict(run) for run in study.meta.get("runs", [])]
    if live and runs:
        runs[-1]["until"] = now.isoformat()
    resources = study.spec.get("resources") or {}
    use = budget_use(
        budget,
        runs,
        study.epochs.to_dict("records"),
        cpus=float(resources.get("cpus", 1)),
        gpus=float(resources.get("gpus", 0)),
    )
    return [*lines, "budget: " + "; ".join(left(budget, use))]


def render_status(study: StudyData, now: dt.datetime, *, live: bool) -> str:
    """The terminal view of a study at time `now` (aware UTC): trials by state, epochs done and
    planned, best so far, running trials, and while `live` (a driver runs it) an ETA. Pure: the
    same files give the same text."""
    if not live and study.meta.get("state") == "running":
        study = study.driver_gone()  # what it had running is interrupted, not running
    trials, epochs, meta = study.trials, study.epochs, study.meta
    state = meta.get("state", "?") if live or meta.get("state") != "running" else "driver gone"
    lines = [f"study {study.name} [{state}]"]
    if meta.get("started"):
        started = dt.datetime.fromisoformat(meta["started"])
        end = dt.datetime.fromisoformat(meta["finished"]) if meta.get("finished") else now
        lines[0] += (
            f"  started {started:%Y-%m-%d %H:%M} UTC, {_duration((end - started).total_seconds())}"
        )
    lines += budget_lines(study, now, live=live)
    planned_trials, epochs_per_trial, asha = _planned(study)
    unseen = max(planned_trials - len(trials), 0)
    counts = trials["stop_reason"].value_counts()  # running/pending while not stopped
    parts = [f"{n} {reason}" for reason, n in counts.items()]
    if unseen:
        parts.append(f"{unseen} not started")
    lines.append(f"trials: {planned_trials} planned | " + ", ".join(parts or ["none yet"]))

    # Running: what trains now. A trial whose last epoch is written is done, whatever the
    # trial table (it lags behind the epoch rows) still says.
    training = trials["stop_reason"] == "running"
    finished = trials["state"].isin(FINAL_STATES) | (trials["state"] == "RUNNING") & ~training
    left_running = (trials["max_epochs"] - trials["epochs_run"]).clip(lower=0)[~finished].sum()
    left = int(left_running) + unseen * epochs_per_trial
    done = len(epochs)
    total = done + left
    filled = round(BAR_WIDTH * done / total) if total else BAR_WIDTH
    lines.append(
        f"epochs: {done} done / {total} planned{' at most (ASHA stops some early)' if asha else ''}"
        f"  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done / total if total else 1:.0%}"
    )

    best = best_line(study)
    if best:
        lines.append(best)
    running = trials[training]
    if len(running):
        lines.append("running:")
        for row in running.sort_values("trial_id").itertuples():
            last = epochs[epochs["trial_id"] == row.trial_id].tail(1)
            current = f"  {study.metric} {last[study.metric].iloc[0]:.3f}" if len(last) else ""
            lines.append(f"  {row.trial_id}  epoch {row.epochs_run}/{row.max_epochs}{current}")
    if live and left:
        starts = int((~finished & ~training).sum()) + unseen
        at_once = min([len(running), *_slot_limits(study)])
        lines.append(_eta(trials, epochs, left, starts, at_once, asha))
    return "\n".join(lines) + "\n"


def _slot_limits(study: StudyData) -> list[int]:
    """What bounds the trials running at once: ``resources.max_concurrent``, and on the
    driver's own machine (no cluster address) its CPUs and GPUs over each trial's."""
    resources = study.spec.get("resources") or {}
    limits = [int(resources["max_concurrent"])] if resources.get("max_concurrent") else []
    hardware = study.meta.get("hardware") or {}
    if not study.meta.get("address") and hardware.get("cpus"):
        cpus, gpus = float(resources.get("cpus", 1)), float(resources.get("gpus", 0))
        if cpus > 0:
            limits.append(max(int(hardware["cpus"] // cpus), 1))
        if gpus > 0:
            limits.append(max(int(len(hardware.get("gpus") or []) // gpus), 1))
    return limits


def startup_seconds(trials: pd.DataFrame, epochs: pd.DataFrame) -> float:
    """Median seconds from Ray starting a trial to its first epoch starting (a new process,
    imports, the data), from ``started_at`` and the first epoch row; 0 before any is known."""
    if "started_at" not in trials or "time/ended_at" not in epochs or epochs.empty:
        return 0.0
    first = epochs.groupby("trial_id").first()
    epoch = pd.to_timedelta(pd.to_numeric(first["time/epoch_s"]), unit="s")
    started = trials.set_index("trial_id")["started_at"].reindex(first.index)
    waits = seconds_between(first["time/ended_at"] - epoch, started).dropna()
    return float(waits.clip(lower=0).median()) if len(waits) else 0.0


def _eta(
    trials: pd.DataFrame, epochs: pd.DataFrame, left: int, starts: int, running: int, asha: bool
) -> str:
    """Epochs left at the median epoch time plus the start-ups of trials not running yet, over
    the trials that really run at once now."""
    seconds = pd.to_numeric(epochs.get("time/epoch_s", pd.Series(dtype=float))).median()
    if pd.isna(seconds):
        return "ETA: after the first epoch"
    startup = startup_seconds(trials, epochs)
    parallel = max(running, 1)
    eta = (left * float(seconds) + starts * startup) / parallel
    return (
        f"ETA: {'at most ' if asha else ''}{_duration(eta)} ({left} epochs left at "
        f"{seconds:.1f} s each, {starts} trial start(s) at {startup:.1f} s; {running} trial(s) "
        "running at once)"
    )


def follow(
    directory: Path,
    *,
    interval: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Iterator[str]:
    """Frames of :func:`render_status`, one every `interval` seconds, ending with the first
    frame where no driver runs the study (completed, interrupted, or its driver killed)."""
    reader = EpochReader()  # each epoch file is read once: they never change
    while True:
        study = read_study(directory, reader, status_columns)
        live = is_live(study)
        yield render_status(study, clock(), live=live)
        if not live:
            return
        sleep(interval)
