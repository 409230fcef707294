"""Figures of the search: values against searched factors, learning rate x batch size, parallel
coordinates, a contour of two parameters, Optuna's history and parameter importance. All use
one budget per trial (see :func:`~cifartune.reports.stats.budget_values`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..results import CONFIG_PREFIX, StudyData
from .naming import LOG_KEYS, STOP_NAMES, fmt, short
from .plotting import STOP_COLOR, panel_grid, t_errorbar
from .stats import budget_values

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _natural(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def _scored(study: StudyData) -> tuple[pd.DataFrame, str]:
    """Trials with their value on the common budget (column `value`), and its label."""
    values, label = budget_values(study)
    trials = study.trials.assign(value=study.trials["trial_id"].map(values))
    return trials.dropna(subset=["value"]), label


def fig_lr_batch_heatmap(study: StudyData) -> Figure | None:
    """Best validation metric over learning rate x batch size (seed Q16); diverged cells marked."""
    lr, bs = CONFIG_PREFIX + "optim.lr", CONFIG_PREFIX + "batch_size"
    trials, label = _scored(study)
    if lr not in trials or bs not in trials:
        return None
    if trials[lr].nunique() < 2 or trials[bs].nunique() < 2 or trials[lr].nunique() > 12:
        return None
    table = trials.pivot_table(index=lr, columns=bs, values="value", aggfunc="mean")
    table = table.sort_index(ascending=False)
    diverged = (
        study.trials.assign(d=study.trials["stop_reason"].eq("diverged"))
        .pivot_table(index=lr, columns=bs, values="d", aggfunc="sum")
        .reindex_like(table)
        .fillna(0)
    )
    annot = table.map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    annot = annot.where(diverged == 0, annot + "\n" + diverged.astype(int).astype(str) + " div.")
    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 3, 0.9 * table.shape[0] + 2))
    sns.heatmap(
        table,
        annot=annot,
        fmt="",
        cmap="viridis",
        ax=ax,
        cbar_kws={"label": f"{label} (mean over seeds)"},
    )
    ax.set(xlabel="batch size", ylabel="learning rate")
    ax.set_yticklabels([f"{v:g}" for v in table.index], rotation=0)
    fig.tight_layout()
    return fig


def fig_factors(study: StudyData) -> Figure | None:
    """The budget value per searched factor: every trial, with the mean and its t-interval for
    categorical values; a scatter for continuous ones."""
    trials, label = _scored(study)
    keys = (["variant"] if study.has_variants() else []) + study.factor_keys()
    if not keys or len(trials) < 2:
        return None
    fig, axes = panel_grid(len(keys), 3, 5.2, 3.8)
    for ax, key in zip(axes, keys, strict=True):
        values = trials[key]
        if _numeric(values) and values.nunique() > 8:
            ax.scatter(values.astype(float), trials["value"], s=30, color="C0")
            if short(key) in [short(k) for k in LOG_KEYS]:
                ax.set_xscale("log")
        else:
            present = set(values.astype(str))
            order = (
                [v for v in study.spec["variants"] if v in present]
                if key == "variant"
                else sorted(present, key=_natural)
            )
            data = trials.assign(**{key: values.astype(str)})
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
    fig.tight_layout()
    return fig


def _unit_scale(values: pd.Series, key: str) -> tuple[np.ndarray, list[float], list[str]]:
    """Values mapped to 0..1 for a shared axis, with tick positions and labels."""
    if _numeric(values):
        numbers = values.astype(float).to_numpy()
        if short(key) in [short(k) for k in LOG_KEYS] and (numbers > 0).all():
            numbers = np.log10(numbers)
        low, high = numbers.min(), numbers.max()
        scaled = (numbers - low) / (high - low) if high > low else np.full(len(numbers), 0.5)
        return scaled, [0.0, 1.0], [fmt(values.min()), fmt(values.max())]
    levels = sorted(values.astype(str).unique(), key=_natural)
    level_y = {v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}
    return values.astype(str).map(level_y).to_numpy(), list(level_y.values()), levels


def fig_parallel(study: StudyData) -> Figure | None:
    """Parallel coordinates: each trial a line across its searched values, coloured by result."""
    trials, label = _scored(study)
    keys = (["variant"] if study.has_variants() else []) + study.factor_keys()
    if len(keys) < 3 or len(trials) < 3:  # two factors: the heatmap or contour shows them
        return None
    scaled = {key: _unit_scale(trials[key], key) for key in keys}
    metric = trials["value"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(keys)), 4.5))
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(metric.min(), metric.max())
    for index in np.argsort(metric if study.mode == "max" else -metric):
        ax.plot(
            range(len(keys)),
            [scaled[k][0][index] for k in keys],
            color=cmap(norm(metric[index])),
            alpha=0.8,
            lw=1.4,
        )
    for position, key in enumerate(keys):
        ax.axvline(position, color="0.6", lw=0.8)
        for tick, text in zip(scaled[key][1], scaled[key][2], strict=True):
            ax.text(position + 0.03, tick, text, fontsize=8, va="center")
    ax.set_xticks(range(len(keys)), [short(k) for k in keys], rotation=20)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(keys) - 0.6)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    fig.tight_layout()
    return fig


def fig_contour(study: StudyData, importances: pd.Series) -> Figure | None:
    """The budget value over the two most important continuous searched parameters: a contour
    interpolated between the trials (dots), as in Optuna's contour plot."""
    trials, label = _scored(study)
    numeric = [k for k in study.factor_keys() if _numeric(trials[k]) and trials[k].nunique() > 3]
    if len(numeric) < 2 or len(trials) < 6:
        return None
    ranked = sorted(numeric, key=lambda k: -importances.get(k.removeprefix(CONFIG_PREFIX), 0.0))
    x_key, y_key = ranked[:2]
    logs = [short(k) for k in LOG_KEYS]

    def axis(key: str) -> np.ndarray:
        values = trials[key].astype(float).to_numpy()
        return np.log10(values) if short(key) in logs and (values > 0).all() else values

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
    ax.set(
        xlabel=("log10 " if short(x_key) in logs else "") + short(x_key),
        ylabel=("log10 " if short(y_key) in logs else "") + short(y_key),
    )
    fig.tight_layout()
    return fig


def _optuna_distribution(dim: object) -> BaseDistribution:
    import optuna.distributions as d

    if isinstance(dim, list):
        return d.CategoricalDistribution(dim)
    assert isinstance(dim, dict)
    if dim["type"] == "float":
        return d.FloatDistribution(dim["low"], dim["high"], log=dim.get("log", False))
    if dim["type"] == "int":
        return d.IntDistribution(dim["low"], dim["high"], log=dim.get("log", False))
    return d.CategoricalDistribution(dim["choices"])


def _native(value: object, distribution: object) -> object:
    """Parquet values back to what the distribution holds (e.g. 'crop+flip' strings, bools)."""
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        for choice in distribution.choices:
            if str(choice) == str(value) or (isinstance(choice, bool) and choice == value):
                return choice
    if isinstance(distribution, d.IntDistribution):
        return int(value)  # type: ignore[call-overload]
    if isinstance(distribution, d.FloatDistribution):
        return float(value)  # type: ignore[arg-type]
    return value


def _importance(trials: pd.DataFrame, space: dict, mode: str) -> pd.Series:
    import optuna

    distributions = {k: _optuna_distribution(v) for k, v in space.items()}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={k: _native(row[CONFIG_PREFIX + k], d) for k, d in distributions.items()},
                distributions=distributions,
                value=float(row["value"]),
            )
            for _, row in trials.iterrows()
        ]
    )
    try:
        return pd.Series(
            optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
        )
    except (RuntimeError, ValueError, ZeroDivisionError):
        return pd.Series(dtype=float)


def optuna_importances(study: StudyData) -> pd.DataFrame:
    """PED-ANOVA importance of each searched parameter on the common budget, and its range when
    each trial in turn is left out (how much the ranking rests on single trials)."""
    import optuna

    space = study.spec.get("space") or {}
    trials, _ = _scored(study)
    if len(trials) < 5 or not space:
        return pd.DataFrame()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    full = _importance(trials, space, study.mode)
    if full.empty:
        return pd.DataFrame()
    left_out = pd.DataFrame(
        [_importance(trials.drop(index=i), space, study.mode) for i in trials.index]
    ).reindex(columns=full.index)
    return pd.DataFrame(
        {"importance": full, "low": left_out.min(), "high": left_out.max()}
    ).sort_values("importance")


def fig_optuna(study: StudyData, importances: pd.DataFrame) -> Figure | None:
    """Optimization history on the common budget (each trial and the best so far) and parameter
    importance with its leave-one-trial-out range."""
    if (study.spec.get("search") or {}).get("algorithm") != "optuna":
        return None
    trials, label = _scored(study)
    if len(trials) < 2:
        return None
    trials = trials.reset_index(drop=True)
    panels = 2 if not importances.empty else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    order = np.arange(1, len(trials) + 1)
    values = trials["value"]
    running = values.cummax() if study.mode == "max" else values.cummin()
    history = axes[0][0]
    for reason, members in trials.groupby("stop_reason"):
        history.scatter(
            order[members.index],
            members["value"],
            color=STOP_COLOR.get(str(reason), "C0"),
            s=30,
            label=f"{STOP_NAMES.get(str(reason), reason)} ({len(members)})",
        )
    history.step(order, running, where="post", color="C1", label="best so far")
    history.xaxis.set_major_locator(MaxNLocator(integer=True))
    history.set(xlabel="trial (in order of creation)", ylabel=label, title="optimization history")
    history.legend(fontsize=8, loc="lower right")
    if panels == 2:
        ax = axes[0][1]
        names = [short(k) for k in importances.index]
        ax.barh(names, importances["importance"], color="C0")
        ax.errorbar(
            importances["importance"],
            names,
            xerr=[
                (importances["importance"] - importances["low"]).clip(lower=0),
                (importances["high"] - importances["importance"]).clip(lower=0),
            ],
            fmt="none",
            ecolor="k",
            capsize=3,
        )
        ax.set(xlabel="importance (PED-ANOVA)", title="parameter importance")
    fig.tight_layout()
    return fig
