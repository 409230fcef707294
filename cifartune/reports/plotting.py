"""Drawing helpers shared by the figures: the theme, seed curves with their t-interval band,
t-interval error bars for seaborn, and axis limits that outliers do not stretch."""

from __future__ import annotations

import math
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from .stats import MIN_FOR_INTERVAL, SHOW_SEEDS, estimate

sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
SPLIT_STYLE = {"train": "-", "val": "--", "test": ":"}
STOP_COLOR = {"completed": "C0", "early-stopped": "0.55", "diverged": "crimson", "error": "k"}
BAND_NOTE = (
    "lines are means over seeds; the band is the 95% Student t-interval (from 3 seeds on); "
    "thin lines are the individual seeds (up to 3)"
)


def t_errorbar(values: Iterable[float]) -> tuple[float, float]:
    """seaborn ``errorbar=`` callable: the 95% t-interval of the mean (none below 3 values,
    where the points themselves are drawn)."""
    est = estimate(values)
    if est.n < MIN_FOR_INTERVAL or not est.has_interval:
        return est.mean, est.mean
    return est.low, est.high


def draw_runs(
    ax: Axes,
    curves: pd.DataFrame,
    column: str,
    *,
    color: str,
    style: str = "-",
    label: str | None = None,
    seeds: bool = True,
) -> None:
    """Mean of `column` per epoch over the trials in `curves` (one per seed), its t-band, and
    the seeds themselves when there are few."""
    data = curves[["trial_id", "epoch", column]].dropna()
    data = data[np.isfinite(data[column].astype(float))]
    if data.empty:
        return
    runs = data["trial_id"].nunique()
    if seeds and runs <= SHOW_SEEDS and runs > 1:
        for _, run in data.groupby("trial_id"):
            ax.plot(run["epoch"], run[column], style, color=color, lw=0.8, alpha=0.35)
    per_epoch = data.groupby("epoch")[column]
    epochs = [epoch for epoch, _ in per_epoch]
    stats = [estimate(values) for _, values in per_epoch]
    ax.plot(epochs, [s.mean for s in stats], style, color=color, lw=1.8, label=label)
    if runs >= MIN_FOR_INTERVAL:
        # Epochs that fewer seeds reached (one diverged, say) get no band: at n = 2 it is
        # 12.7 standard errors wide.
        shown = [s.has_interval and s.n >= MIN_FOR_INTERVAL for s in stats]
        low = [s.low if ok else s.mean for s, ok in zip(stats, shown, strict=True)]
        high = [s.high if ok else s.mean for s, ok in zip(stats, shown, strict=True)]
        ax.fill_between(epochs, low, high, color=color, alpha=0.15, lw=0)


def data_limits(values: pd.Series, quantile: float = 1.0) -> tuple[float, float] | None:
    """y-limits from the measured values, not from the t-bands (at 3 seeds a band is 4.3
    standard errors wide and would stretch the axis past 0-100%). With quantile < 1 the top is
    the bulk of the values: a first-epoch blow-up (Adam's loss, say) or a spike would otherwise
    flatten every other curve."""
    finite = pd.to_numeric(values, errors="coerce").astype(float)
    finite = finite[np.isfinite(finite)]
    if finite.empty:
        return None
    low, high = float(finite.min()), float(finite.quantile(quantile))
    pad = (high - low) * 0.06 or 0.1
    return low - pad, high + pad


def whole_epochs(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def panel_grid(count: int, columns: int, width: float, height: float) -> tuple[plt.Figure, list]:
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def varies(values: pd.Series) -> bool:
    """A panel whose axis would be one constant value (or one point) says nothing."""
    return pd.Series(values).dropna().astype(str).nunique() > 1
