"""A trial's summary from its epoch rows: epochs run, best epoch and value, stop reason, time and
compute; recomputed by every reader, since the epoch rows are the truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cifartune.store.columns import CONFIG_PREFIX, START_PREFIX
from cifartune.store.tables import _missing


def metric_value(value: Any) -> float:
    """A metric as a float; NaN where it is missing or not a number."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _flag(value: Any) -> bool:
    """A boolean column's value; missing is False."""
    return not _missing(value) and bool(value)


def summarize_epochs(
    epochs: Sequence[Mapping[str, Any]], metric: str, mode: str, planned: int, state: str
) -> dict[str, Any]:
    """Per-trial summary of its epoch rows (in epoch order): epochs run, best epoch and value
    of `metric` (the first best; NaN never is), stop reason, time."""
    run = len(epochs)
    summary: dict[str, Any] = {
        "epochs_run": run,
        "best_epoch": None,
        "best_metric": None,
        "final_val_top1": None,
        "final_train_top1": None,
        "time_s": 0.0,
        "cpu_s": None,  # measured, where the epochs measured it
    }
    if run:
        for row in epochs:
            value = metric_value(row.get(metric))
            best = summary["best_metric"]
            if not math.isnan(value) and (
                best is None or (value > best if mode == "max" else value < best)
            ):
                summary["best_epoch"], summary["best_metric"] = int(row["epoch"]), value
        last = epochs[-1]
        summary["final_val_top1"] = metric_value(last.get("val/top1"))
        summary["final_train_top1"] = metric_value(last.get("train/top1"))
        times = [metric_value(row.get("time/epoch_s")) for row in epochs]
        summary["time_s"] = math.fsum(t for t in times if not math.isnan(t))
        cpu = [metric_value(row.get("time/cpu_s")) for row in epochs]
        if not any(math.isnan(c) for c in cpu):
            summary["cpu_s"] = math.fsum(cpu)
    diverged = bool(run and _flag(epochs[-1].get("diverged")))
    if state == "ERROR":
        reason = "error"
    elif diverged:
        reason = "diverged"
    elif state in ("TERMINATED", "STOPPED"):  # STOPPED: by the study's budget
        stopped_early = "early-stopped" if state == "TERMINATED" else "budget"
        reason = "completed" if run >= planned else stopped_early
    elif state == "RUNNING" and run >= planned:
        # Its last epoch is written: the trial table (which the driver writes at a bounded
        # rate) has not caught up with the epoch rows, which are the truth.
        reason = "completed"
    else:
        reason = state.lower()
    summary["stop_reason"] = reason
    return summary


def reserved(seconds: float, cpus: float, gpus: float) -> dict[str, float]:
    """CPU and GPU seconds a trial held (its resources for its epochs' time), not used."""
    return {"reserved_cpu_s": seconds * cpus, "reserved_gpu_s": seconds * gpus}


# What a summary reads of an epoch row (summarize_epochs), besides the study's metric.
SUMMARY_INPUTS = ("trial_id", "epoch", "val/top1", "train/top1", "time/epoch_s", "time/cpu_s",
                  "diverged")  # fmt: skip


def epochs_by_trial(
    epochs: pd.DataFrame, columns: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Each trial's epoch rows (as dicts, in the frame's order), only `columns` (all without):
    one conversion of the frame, not one per trial (that grew to seconds at 1,000 trials)."""
    if epochs.empty:
        return {}
    if columns is not None:
        epochs = epochs[[c for c in dict.fromkeys(columns) if c in epochs]]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in epochs.to_dict("records"):
        grouped.setdefault(str(row["trial_id"]), []).append(row)
    return grouped


def resummarize(
    trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, mode: str, cpus: float, gpus: float
) -> pd.DataFrame:
    """The trial table with every per-trial summary recomputed from the epoch rows (sorted by
    trial and epoch), the truth: the table on disk may lag behind them (the driver rewrites it
    at a bounded rate, or died before its last write), and a view must agree with itself."""
    if trials.empty:
        return trials
    by_trial = epochs_by_trial(epochs, [*SUMMARY_INPUTS, metric])
    rows = []
    for row in trials.to_dict("records"):
        mine = by_trial.get(row["trial_id"], [])
        row.update(summarize_epochs(mine, metric, mode, int(row["max_epochs"]), row["state"]))
        row.update(reserved(row["time_s"], cpus, gpus))
        row.pop("gpu_s", None)  # older versions' name for reserved_gpu_s
        rows.append(row)
    return pd.DataFrame(rows)


def in_force_at_best(
    trials: pd.DataFrame, epochs: pd.DataFrame, keys: Sequence[str]
) -> pd.DataFrame:
    """The trial table with each trial's `keys` (``config/*`` columns) as its best epoch's row
    holds them: under population-based training the values in force when its best model
    trained, not the ones it started with (which exploits may have discarded with their
    weights); those, its first epoch's, are kept as ``start/*``. A trial without epochs keeps
    its own."""
    keys = [k for k in keys if k in trials and k in epochs]
    if trials.empty or epochs.empty or not keys:
        return trials
    rows = epochs.drop_duplicates(["trial_id", "epoch"]).set_index(["trial_id", "epoch"])[keys]
    first = rows.sort_index().groupby(level="trial_id").head(1).droplevel("epoch")
    best = pd.MultiIndex.from_arrays(
        [trials["trial_id"], pd.to_numeric(trials["best_epoch"], errors="coerce")]
    )
    found = best.isin(rows.index)
    trials = trials.copy()
    for key in keys:
        own = trials[key].astype(object)
        start = trials["trial_id"].map(first[key]).astype(object)
        trials[START_PREFIX + key.removeprefix(CONFIG_PREFIX)] = start.where(start.notna(), own)
        trials[key] = own
        trials.loc[found, key] = rows[key].reindex(best[found]).to_numpy()
    return trials
