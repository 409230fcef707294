"""The report's one statistic: means over seeds with 95% Student t-intervals, differences of two
means with Welch's t-interval, and the per-trial measurements the report judges by (overfitting,
the budget every trial reached)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from cifartune.store.study_data import StudyData

# Seeds are listed beside the mean up to this many; the interval is printed from 3 seeds on (at
# n = 2 a t-interval is 12.7 standard errors wide and says less than the two values do).
SHOW_SEEDS = 3
MIN_FOR_INTERVAL = 3


def t95(df: float) -> float:
    """The 97.5% quantile of Student's t at `df` degrees of freedom, fractional ones (Welch's)
    included: the half-width factor of a two-sided 95% interval."""
    return float(stats.t.ppf(0.975, df))


def _clean(values: Iterable[object] | pd.Series) -> np.ndarray:
    series = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    array = series.to_numpy(dtype=float)
    return array[np.isfinite(array)]


@dataclass(frozen=True)
class Estimate:
    """A mean (or a difference of means) with its 95% t-interval half-width (nan: not defined)."""

    mean: float
    half: float
    n: int
    values: tuple[float, ...] = ()

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.half)


def estimate(values: Iterable[object] | pd.Series) -> Estimate:
    """Mean over seeds and the half-width of its 95% Student t-interval."""
    array = _clean(values)
    n = len(array)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(array[0]), math.nan, 1, (float(array[0]),))
    half = t95(n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
    return Estimate(float(array.mean()), half, n, tuple(float(v) for v in array))


def difference(
    a: Iterable[object] | pd.Series, b: Iterable[object] | pd.Series, scale: float = 1.0
) -> Estimate:
    """mean(a) - scale * mean(b) with Welch's 95% t-interval (unequal variances). A side with a
    single value is taken as a constant, so the interval is the other side's one-sample interval."""
    x, y = _clean(a), _clean(b) * scale
    if not len(x) or not len(y):
        return Estimate(math.nan, math.nan, 0)
    mean = float(x.mean() - y.mean())
    parts = [(float(v.var(ddof=1)) / len(v), len(v) - 1) for v in (x, y) if len(v) > 1]
    n = len(x) + len(y)
    if not parts:
        return Estimate(mean, math.nan, n)
    se2 = sum(p for p, _ in parts)
    if se2 == 0:
        return Estimate(mean, 0.0, n)
    df = se2**2 / sum(p**2 / d for p, d in parts)
    return Estimate(mean, t95(df) * math.sqrt(se2), n)


def fmt_number(value: float, digits: int) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_estimate(values: Iterable[object] | pd.Series, digits: int = 1) -> str:
    """'mean ± half (seed values)': the interval from 3 values on, the values up to 3."""
    est = estimate(values)
    if est.n == 0:
        return "–"
    if est.n == 1:
        return fmt_number(est.mean, digits)
    text = fmt_number(est.mean, digits)
    if est.n >= MIN_FOR_INTERVAL:
        text += f" ± {fmt_number(est.half, digits)}"
    if est.n <= SHOW_SEEDS:
        text += " (" + ", ".join(fmt_number(v, digits) for v in est.values) + ")"
    return text


def fmt_interval(est: Estimate, digits: int = 1, unit: str = "") -> str:
    """A difference with its interval: '+12.3 (95% CI 3.1 to 21.5)'."""
    if not math.isfinite(est.mean):
        return "–"
    text = f"{est.mean:+.{digits}f}{unit}"
    if est.has_interval:
        text += f" (95% CI {est.low:+.{digits}f} to {est.high:+.{digits}f})"
    return text


INTERVAL_NOTE = (
    "Mean over seeds ± the half-width of its 95% Student t-interval (from 3 seeds on); with 3 "
    "seeds or fewer the seeds' own values follow in parentheses."
)
# Overfitting (seed Q18): the validation loss bottoms out before the last epochs, then stays
# above that minimum by more than RISE for all of the last epochs, while training accuracy
# still improves. A single noisy spike cannot satisfy "all of the last epochs".
RISE = 0.10
MIN_EPOCHS_TO_JUDGE = 4
OVERFIT_COLUMNS = (
    "trial_id", "epochs", "tail", "min_epoch", "min_val_loss", "tail_low_val_loss", "rise",
    "train_top1_at_min", "train_top1_final", "judged", "overfitting",
)  # fmt: skip


def tail_length(epochs: pd.Series) -> pd.Series:
    """How many final epochs must all stay above the minimum: a quarter, at least 2."""
    return np.maximum(2, np.ceil(epochs / 4)).astype(int)


def overfitting_table(study: StudyData) -> pd.DataFrame:
    """Per trial, the numbers that decide the overfitting flag (see RISE), in columns: a
    report of 10,000 trials judges them all at once."""
    curves = study.epochs[["trial_id", "epoch", "val/loss", "train/top1"]].assign(
        loss=lambda e: pd.to_numeric(e["val/loss"], errors="coerce").astype(float)
    )
    curves = curves[np.isfinite(curves["loss"])]
    if curves.empty:
        return pd.DataFrame(columns=list(OVERFIT_COLUMNS))
    trial = curves.groupby("trial_id", sort=True)
    epochs = trial["epoch"].max().astype(int)
    tail = tail_length(epochs)
    best = curves.loc[trial["loss"].idxmin()].set_index("trial_id")
    final = curves.drop_duplicates("trial_id", keep="last").set_index("trial_id")["train/top1"]
    late = curves["epoch"] > curves["trial_id"].map(epochs - tail)
    low = curves[late].groupby("trial_id")["loss"].min()
    table = pd.DataFrame(
        {
            "epochs": epochs,
            "tail": tail,
            "min_epoch": best["epoch"].astype(int),
            "min_val_loss": best["loss"],
            "tail_low_val_loss": low,
            "rise": low / best["loss"] - 1,
            "train_top1_at_min": best["train/top1"].astype(float),
            "train_top1_final": final.astype(float),
            "judged": epochs >= MIN_EPOCHS_TO_JUDGE,
        }
    )
    table["overfitting"] = (
        table["judged"]
        & (table["min_epoch"] <= table["epochs"] - table["tail"])
        & (table["rise"] > RISE)
        & (table["train_top1_final"] > table["train_top1_at_min"])
    )
    return table.rename_axis("trial_id").reset_index()[list(OVERFIT_COLUMNS)]


OVERFIT_RULE = (
    f"A trial overfits when its validation loss reaches its minimum before its last epochs, "
    f"every one of the last epochs (a quarter of the run, at least 2) stays more than "
    f"{RISE:.0%} above that minimum, and its training top-1 at the last epoch is higher than "
    f"at the minimum. Runs of fewer than {MIN_EPOCHS_TO_JUDGE} epochs are not judged."
)


def common_budget(study: StudyData) -> int | None:
    """The most epochs every trial that did not diverge or fail ran (ASHA stops trials at
    different budgets; comparing their best values mixes budgets). None when all ran alike."""
    trials = study.trials
    alive = trials[~trials["stop_reason"].isin(["diverged", "error"])]
    runs = pd.to_numeric(alive["epochs_run"], errors="coerce").dropna()
    runs = runs[runs > 0]
    if runs.empty or runs.nunique() == 1:
        return None
    return int(runs.min())


def budget_note(study: StudyData) -> str:
    """The caption clause for views on :func:`budget_values` when budgets differ."""
    budget = common_budget(study)
    if budget is None:
        return ""
    return (
        "trials ran different numbers of epochs, so every trial is compared at epoch "
        f"{budget}, which all of them reached"
    )


def budget_values(study: StudyData) -> tuple[pd.Series, str]:
    """Each trial's value of the study metric on one common budget, by trial id, and its label:
    at the epoch every trial reached when budgets differ, else the best over the whole run."""
    budget = common_budget(study)
    if budget is None:
        scored = study.trials.dropna(subset=["best_metric"])
        values = scored.set_index("trial_id")["best_metric"].astype(float)
        return values, f"best {study.metric}"
    epochs = study.epochs[study.epochs["epoch"] == budget]
    values = epochs.set_index("trial_id")[study.metric].astype(float)
    return values[np.isfinite(values)], f"{study.metric} at epoch {budget}"
