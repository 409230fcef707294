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
    summary["stop_reason"] = stop_reason(state, run, planned, diverged)
    return summary


def stop_reason(state: str, run: int, planned: int, diverged: bool) -> str:
    """A trial's outcome from Ray's state, its epochs run and planned, and its last epoch."""
    if state == "ERROR":
        return "error"
    if diverged:
        return "diverged"
    if state in ("TERMINATED", "STOPPED"):  # STOPPED: by the study's budget
        stopped_early = "early-stopped" if state == "TERMINATED" else "budget"
        return "completed" if run >= planned else stopped_early
    if state == "RUNNING" and run >= planned:
        # Its last epoch is written: the trial table (which the driver writes at a bounded
        # rate) has not caught up with the epoch rows, which are the truth.
        return "completed"
    return state.lower()


def reserved(seconds: float, cpus: float, gpus: float) -> dict[str, float]:
    """CPU and GPU seconds a trial held (its resources for its epochs' time), not used."""
    return {"reserved_cpu_s": seconds * cpus, "reserved_gpu_s": seconds * gpus}


# What a summary reads of an epoch row (summarize_epochs), besides the study's metric.
SUMMARY_INPUTS = ("trial_id", "epoch", "val/top1", "train/top1", "time/epoch_s", "time/cpu_s",
                  "diverged")  # fmt: skip


def epochs_by_trial(epochs: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Each trial's epoch rows (as dicts, in the frame's order): one conversion of the frame,
    not one per trial (that grew to seconds at 1,000 trials)."""
    if epochs.empty:
        return {}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in epochs.to_dict("records"):
        grouped.setdefault(str(row["trial_id"]), []).append(row)
    return grouped


def resummarize(
    trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, mode: str, cpus: float, gpus: float
) -> pd.DataFrame:
    """The trial table with every per-trial summary recomputed from the epoch rows (sorted by
    trial and epoch), the truth: the table on disk may lag behind them (the driver rewrites it
    at a bounded rate, or died before its last write), and a view must agree with itself.
    What :func:`summarize_epochs` computes for one trial, for all at once in columns: its
    cost follows the rows, not a Python loop per trial."""
    if trials.empty:
        return trials
    per_trial = _summaries(epochs, metric, mode)
    out = trials.drop(columns=["gpu_s"], errors="ignore").copy()  # gpu_s: an older name
    ids = out["trial_id"].astype(str)
    for column in per_trial.columns:
        out[column] = ids.map(per_trial[column])
    out["epochs_run"] = out["epochs_run"].fillna(0).astype(int)
    out["time_s"] = out["time_s"].fillna(0.0)
    for column in ("best_epoch", "best_metric", "final_val_top1", "final_train_top1", "cpu_s"):
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    diverged = out.pop("diverged_last").astype(object).fillna(False).astype(bool)
    out["stop_reason"] = [
        stop_reason(str(state), run, int(planned), flag)
        for state, run, planned, flag in zip(
            out["state"], out["epochs_run"], out["max_epochs"], diverged, strict=True
        )
    ]
    out["reserved_cpu_s"] = out["time_s"] * cpus
    out["reserved_gpu_s"] = out["time_s"] * gpus
    return out


def _summaries(epochs: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Per trial (the index): epochs run, the first best epoch and value of `metric` (NaN
    never is), the last epoch's val/train top-1 and diverged flag, wall seconds, and CPU
    seconds where every epoch measured them."""
    columns = ["epochs_run", "best_epoch", "best_metric", "final_val_top1", "final_train_top1",
               "time_s", "cpu_s", "diverged_last"]  # fmt: skip
    if epochs.empty:
        return pd.DataFrame(columns=columns)
    trial = epochs["trial_id"].astype(str)

    def numbers(name: str) -> pd.Series:
        values = epochs[name] if name in epochs else pd.Series(math.nan, index=epochs.index)
        if values.dtype == bool:  # a flag is not a metric (metric_value)
            return pd.Series(math.nan, index=epochs.index)
        return pd.to_numeric(values, errors="coerce").astype(float)

    value = numbers(metric)
    valid = value.notna()
    by_valid = value[valid].groupby(trial[valid], sort=False)
    best_row = by_valid.idxmax() if mode == "max" else by_valid.idxmin()
    tails = epochs.groupby(trial, sort=False).tail(1)
    last = tails.set_index(trial[tails.index])
    epoch_s, cpu_s = numbers("time/epoch_s"), numbers("time/cpu_s")
    out = pd.DataFrame(index=pd.Index(trial.unique(), name="trial_id"))
    out["epochs_run"] = trial.value_counts()
    out["best_epoch"] = pd.Series(epochs.loc[best_row, "epoch"].to_numpy(), best_row.index)
    out["best_metric"] = pd.Series(value[best_row].to_numpy(), best_row.index)
    out["final_val_top1"] = pd.to_numeric(last.get("val/top1"), errors="coerce")
    out["final_train_top1"] = pd.to_numeric(last.get("train/top1"), errors="coerce")
    out["time_s"] = epoch_s.groupby(trial).sum()
    measured = cpu_s.notna().groupby(trial).all()
    out["cpu_s"] = cpu_s.groupby(trial).sum().where(measured)
    flags = last["diverged"] if "diverged" in last else pd.Series(False, index=last.index)
    out["diverged_last"] = flags.map(_flag)
    return out


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
