"""Drawing helpers shared by the figures: the theme, the drawn figure with the caption of what it
shows (:class:`Plot`), seed curves with their t-interval band, t-interval error bars for seaborn,
and axis limits that outliers do not stretch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .naming import STOP_NAMES
from .stats import MIN_FOR_INTERVAL, SHOW_SEEDS, estimate

sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
SPLIT_STYLE = {"train": "-", "val": "--", "test": ":"}
STOP_COLOR = {"completed": "C0", "early-stopped": "0.55", "diverged": "crimson", "error": "k"}
# The same colours as a reader names them, for captions.
STOP_COLOR_NAMES = {"C0": "blue", "0.55": "grey", "crimson": "red", "k": "black"}


@dataclass
class Plot:
    """A drawn figure and its caption, which is built from the panels actually drawn (a view
    whose data lacks a panel leaves that panel out of the figure and of the caption)."""

    figure: Figure
    caption: str
    panels: list[str] = field(default_factory=list)  # what each drawn panel shows, in order


def data_axes(figure: Figure) -> list[Axes]:
    """The figure's visible panels, less colour bars: what `Plot.panels` describes."""
    return [a for a in figure.axes if a.get_visible() and a.get_label() != "<colorbar>"]


def join(parts: Iterable[str]) -> str:
    """Caption clauses: '; '-separated, empty ones dropped, one full stop at the end."""
    text = "; ".join(p.strip().rstrip(".") for p in parts if p and p.strip())
    if not text:
        return ""
    # A sentence starts with a capital, unless it starts with a metric's name (val/top1).
    first = text.split(" ", 1)[0]
    return (text if "/" in first else text[:1].upper() + text[1:]) + "."


def band_note(seeds: Iterable[int]) -> str:
    """What the seed lines of :func:`draw_runs` show, for configurations of these seed counts."""
    counts = {int(n) for n in seeds if n}
    if not counts or counts == {1}:
        return "one seed per configuration (no interval)"
    parts = ["lines are means over seeds"]
    if max(counts) >= MIN_FOR_INTERVAL:
        parts.append(f"the band is the 95% Student t-interval (from {MIN_FOR_INTERVAL} seeds on)")
    if any(1 < n <= SHOW_SEEDS for n in counts):
        parts.append(f"thin lines are the individual seeds (up to {SHOW_SEEDS})")
    return "; ".join(parts)


SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
STYLE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dotted"}


def splits_text(splits: Iterable[str]) -> str:
    """'train solid, validation dashed' for the splits drawn (in SPLIT_STYLE's order)."""
    drawn = set(splits)
    return ", ".join(
        f"{SPLIT_NAMES[s]} {STYLE_NAMES[style]}" for s, style in SPLIT_STYLE.items() if s in drawn
    )


def stop_colors_text(reasons: Iterable[str]) -> str:
    """'blue: completed, grey: stopped by ASHA' for the stop reasons present."""
    present = [r for r in STOP_COLOR if r in set(reasons)]
    return ", ".join(f"{STOP_COLOR_NAMES[STOP_COLOR[r]]}: {STOP_NAMES.get(r, r)}" for r in present)


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
