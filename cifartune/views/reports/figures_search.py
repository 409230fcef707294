"""Figures of the search: values against searched factors, learning rate x batch size, parallel
coordinates, a contour of two parameters. All use one budget per trial (see
:func:`~cifartune.reports.stats.budget_values`); each caption says what its figure drew."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.collections import LineCollection

from cifartune.store.columns import CONFIG_PREFIX
from cifartune.store.study_data import StudyData

from .naming import LOG_KEYS, fmt, metric_digits, short
from .plotting import STOP_COLOR, Plot, join, panel_grid, stop_colors_text, t_errorbar
from .stats import budget_note, budget_values, common_budget

LR, BS = CONFIG_PREFIX + "optim.lr", CONFIG_PREFIX + "batch_size"


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _natural(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def _logged(key: str) -> bool:
    return short(key) in [short(k) for k in LOG_KEYS]


def _drawn(study: StudyData, key: str) -> bool:
    """Whether a key's values come from a range (a float or int distribution of the space or
    of PBT's mutations), not from a list: a continuous axis, however few trials drew it."""
    name = key.removeprefix("config/")
    mutations = (study.spec.get("scheduler") or {}).get("mutations") or {}
    dim = {**(study.spec.get("space") or {}), **mutations}.get(name)
    return isinstance(dim, dict) and dim.get("type") in ("float", "int")


def scored(study: StudyData) -> tuple[pd.DataFrame, str]:
    """Trials with their value on the common budget (column `value`), and its label."""
    values, label = budget_values(study)
    trials = study.trials.assign(value=study.trials["trial_id"].map(values))
    return trials.dropna(subset=["value"]), label


def fig_lr_batch_heatmap(study: StudyData) -> Plot | None:
    """The budget value over learning rate x batch size (seed Q16); diverged cells marked."""
    trials, label = scored(study)
    if LR not in trials or BS not in trials:
        return None
    if trials[LR].nunique() < 2 or trials[BS].nunique() < 2 or trials[LR].nunique() > 12:
        return None
    table = trials.pivot_table(index=LR, columns=BS, values="value", aggfunc="mean")
    table = table.sort_index(ascending=False)
    diverged = (
        study.trials.assign(d=study.trials["stop_reason"].eq("diverged"))
        .pivot_table(index=LR, columns=BS, values="d", aggfunc="sum")
        .reindex_like(table)
        .fillna(0)
    )
    digits = metric_digits(study.metric)
    annot = table.map(lambda v: "" if pd.isna(v) else f"{v:.{digits}f}")
    annot = annot.where(diverged == 0, annot + "\n" + diverged.astype(int).astype(str) + " div.")
    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 3, 0.9 * table.shape[0] + 2))
    sns.heatmap(table, annot=annot, fmt="", cmap="viridis", ax=ax, cbar_kws={"label": label})
    ax.set(xlabel="batch size", ylabel="learning rate")
    ax.set_yticklabels([f"{v:g}" for v in table.index], rotation=0)
    fig.tight_layout()
    # A cell pools every trial with its learning rate and batch size: seeds, and the values of
    # any other searched factor.
    others = [short(k) for k in study.factor_keys if k not in (LR, BS)]
    others += ["variant"] if study.has_variants() else []
    per_cell = int(trials.groupby([LR, BS])["value"].count().max())
    if others:
        pooled = f"mean over each cell's trials, which differ in {', '.join(others)}"
    else:
        pooled = "mean over each cell's seeds" if per_cell > 1 else "one trial per cell"
    caption = join(
        [
            f"Learning rate x batch size: {label}, {pooled}",
            "'N div.': trials of the cell that diverged" if diverged.to_numpy().sum() else "",
            budget_note(study),
        ]
    )
    return Plot(fig, caption, [f"{label} over learning rate x batch size"])


def fig_factors(study: StudyData) -> Plot | None:
    """The budget value per searched factor: every trial, with the mean and its t-interval for
    categorical values; a scatter for continuous ones."""
    trials, label = scored(study)
    keys = [*(["variant"] if study.has_variants() else []), *study.factor_keys]
    if not keys or len(trials) < 2:
        return None
    fig, axes = panel_grid(len(keys), 3, 5.2, 3.8)
    levels, continuous = [], []
    for ax, key in zip(axes, keys, strict=True):
        values = trials[key]
        if _numeric(values) and (values.nunique() > 8 or _drawn(study, key)):
            continuous.append(short(key))
            ax.scatter(values.astype(float), trials["value"], s=30, color="C0")
            if _logged(key):
                ax.set_xscale("log")
        else:
            levels.append(short(key))
            labels = values.map(fmt)  # 0.05, not 0.05000000000000000277
            present = set(labels)
            order = (
                [v for v in study.spec["variants"] if v in present]
                if key == "variant"
                else sorted(present, key=_natural)
            )
            data = trials.assign(**{key: labels})
            sns.stripplot(
                data=data, x=key, y="value", order=order, ax=ax, color="0.35", size=5, jitter=0.15
            )
            sns.pointplot(
                data=data,
                x=key,
                y="value",
                order=order,
                ax=ax,
                errorbar=t_errorbar,
                color="C1",
                linestyle="none",
                capsize=0.15,
                marker="D",
            )
            if len(order) > 4 or max(len(o) for o in order) > 8:
                ax.tick_params(axis="x", rotation=35)
                for tick in ax.get_xticklabels():
                    tick.set_horizontalalignment("right")
        ax.set(xlabel=short(key), ylabel=label)
    if common_budget(study) is not None:  # the figure alone says it too, not only its caption
        fig.suptitle(f"Every trial at epoch {common_budget(study)}, the epoch all of them reached")
    fig.tight_layout()
    caption = join(
        [
            f"{label} per searched factor, one panel each",
            f"{', '.join(levels)}: each trial (grey dots) and the mean (orange diamond) with its "
            "95% t-interval (from 3 trials on)"
            if levels
            else "",
            f"{', '.join(continuous)}: each trial against its value" if continuous else "",
            budget_note(study),
        ]
    )
    return Plot(fig, caption, [f"{label} against {short(k)}" for k in keys])


def _unit_scale(values: pd.Series, key: str) -> tuple[np.ndarray, list[float], list[str]]:
    """Values mapped to 0..1 for a shared axis, with tick positions and labels."""
    if _numeric(values):
        numbers = values.astype(float).to_numpy()
        if _logged(key) and (numbers > 0).all():
            numbers = np.log10(numbers)
        low, high = numbers.min(), numbers.max()
        scaled = (numbers - low) / (high - low) if high > low else np.full(len(numbers), 0.5)
        return scaled, [0.0, 1.0], [fmt(values.min()), fmt(values.max())]
    levels = sorted(values.astype(str).unique(), key=_natural)
    level_y = {v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}
    return values.astype(str).map(level_y).to_numpy(), list(level_y.values()), levels


def fig_parallel(study: StudyData) -> Plot | None:
    """Parallel coordinates: each trial a line across its searched values, coloured by result."""
    trials, label = scored(study)
    keys = [*(["variant"] if study.has_variants() else []), *study.factor_keys]
    if len(keys) < 3 or len(trials) < 3:  # two factors: the heatmap or contour shows them
        return None
    scaled = {key: _unit_scale(trials[key], key) for key in keys}
    metric = trials["value"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(keys)), 4.5))
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(metric.min(), metric.max())
    # One collection of every trial's line (a study of 10,000 trials draws in a second), the
    # best last so that they lie on top.
    order = np.argsort(metric if study.mode == "max" else -metric)
    heights = np.column_stack([scaled[k][0] for k in keys])[order]
    positions = np.broadcast_to(np.arange(len(keys), dtype=float), heights.shape)
    segments = list(np.stack([positions, heights], axis=-1))  # a (keys, 2) array per trial
    lines = LineCollection(segments, colors=cmap(norm(metric[order])), alpha=0.8, lw=1.4)
    ax.add_collection(lines)
    ax.set_ylim(-0.05, 1.05)
    for position, key in enumerate(keys):
        ax.axvline(position, color="0.6", lw=0.8)
        for tick, text in zip(scaled[key][1], scaled[key][2], strict=True):
            ax.text(position + 0.03, tick, text, fontsize=8, va="center")
    ax.set_xticks(range(len(keys)), [short(k) for k in keys], rotation=20)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(keys) - 0.6)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    fig.tight_layout()
    logs = [short(k) for k in keys if _logged(k) and _numeric(trials[k])]
    caption = join(
        [
            f"Each of the {len(trials)} trials with a value as a line across its searched values "
            f"({', '.join(short(k) for k in keys)}), coloured by {label}, the best drawn last",
            "a numeric axis runs from its lowest to its highest value"
            + (f" (log scale: {', '.join(logs)})" if logs else ""),
            budget_note(study),
        ]
    )
    return Plot(fig, caption, ["parallel coordinates of the searched values"])


def fig_contour(study: StudyData, importances: pd.Series) -> Plot | None:
    """The budget value over the two most important continuous searched parameters (the first
    two without an importance ranking): a contour interpolated between the trials (dots), as in
    Optuna's contour plot."""
    trials, label = scored(study)
    numeric = [k for k in study.factor_keys if _numeric(trials[k]) and trials[k].nunique() > 3]
    if len(numeric) < 2 or len(trials) < 6:
        return None
    ranked = sorted(numeric, key=lambda k: -importances.get(k.removeprefix(CONFIG_PREFIX), 0.0))
    x_key, y_key = ranked[:2]

    def logged(key: str) -> bool:
        return _logged(key) and bool((trials[key].astype(float) > 0).all())

    def axis(key: str) -> np.ndarray:
        values = trials[key].astype(float).to_numpy()
        return np.log10(values) if logged(key) else values

    x, y, z = axis(x_key), axis(y_key), trials["value"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    try:
        filled = ax.tricontourf(x, y, z, levels=12, cmap="viridis")
    except (ValueError, RuntimeError):  # collinear or coincident points: no triangulation
        plt.close(fig)
        return None
    colors = [STOP_COLOR.get(r, "C0") for r in trials["stop_reason"]]
    ax.scatter(x, y, c=colors, edgecolors="white", s=40)
    fig.colorbar(filled, ax=ax, label=label)
    names = [("log10 " if logged(k) else "") + short(k) for k in (x_key, y_key)]
    ax.set(xlabel=names[0], ylabel=names[1])
    fig.tight_layout()
    which = (
        "the two most important continuous parameters by PED-ANOVA"
        if not importances.empty
        else "the first two continuous searched parameters, as nothing ranks their importance"
    )
    caption = join(
        [
            f"{label} over {names[0]} and {names[1]}, interpolated between the trials",
            which,
            f"dots: the trials ({stop_colors_text(trials['stop_reason'])})",
            budget_note(study),
        ]
    )
    return Plot(fig, caption, [f"{label} over {names[0]} and {names[1]}"])
