"""Report figures from study Parquet data (seaborn on matplotlib's Agg backend; no display).

Each ``fig_*`` function takes a :class:`~cifartune.results.StudyData` and returns a figure, or
``None`` when the study has nothing to show for it (the report then says why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .results import CONFIG_PREFIX, StudyData

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
SPLIT_STYLE = {"train": "-", "val": "--", "test": ":"}
# Keys whose values span decades: plotted on a log axis.
LOG_KEYS = ("optim.lr", "optim.weight_decay", "data.zca_epsilon")
STOPPED_MARK = {
    "early-stopped": ("v", "stopped by ASHA"),
    "diverged": ("X", "diverged"),
    "error": ("s", "errored"),
}


def short(key: str) -> str:
    return key.removeprefix(CONFIG_PREFIX)


def trial_labels(study: StudyData) -> pd.Series:
    """A readable name per trial: its variant and the searched values, then the seed."""
    keys = study.factor_keys()
    trials = study.trials.set_index("trial_id")

    def label(row: pd.Series) -> str:
        parts = [str(row["variant"])] if row.get("variant") else []
        parts += [f"{short(k)}={_fmt(row[k])}" for k in keys]
        text = ", ".join(parts) or str(row.name)
        return f"{text} (seed {row['seed']})" if study.trials["seed"].nunique() > 1 else text

    return trials.apply(label, axis=1)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def best_trials(study: StudyData, n: int) -> pd.DataFrame:
    scored = study.trials.dropna(subset=["best_metric"])
    return scored.sort_values("best_metric", ascending=study.mode == "min").head(n)


def _splits(frame: pd.DataFrame) -> list[str]:
    return [
        s
        for s in ("train", "val", "test")
        if f"{s}/top1" in frame and frame[f"{s}/top1"].notna().any()
    ]


def _mark_stop(ax: plt.Axes, curve: pd.DataFrame, column: str, reason: str) -> None:
    if reason in STOPPED_MARK and not curve.empty:
        marker, text = STOPPED_MARK[reason]
        last = curve.iloc[-1]
        value = last[column] if math.isfinite(float(last[column])) else ax.get_ylim()[1]
        ax.plot(last["epoch"], value, marker=marker, color="crimson", markersize=11, ls="none")
        ax.annotate(
            text,
            (last["epoch"], value),
            textcoords="offset points",
            xytext=(6, 6),
            color="crimson",
            fontsize=9,
        )


def fig_best_curves(study: StudyData, n: int = 3) -> Figure | None:
    """Accuracy and loss per epoch of the best trials, train vs validation (and test), lab style."""
    best = best_trials(study, n)
    if best.empty:
        return None
    labels = trial_labels(study)
    fig, axes = plt.subplots(len(best), 2, figsize=(11, 3.3 * len(best)), squeeze=False)
    for row, trial in zip(axes, best.itertuples(), strict=True):
        curve = study.epochs[study.epochs["trial_id"] == trial.trial_id]
        for split in _splits(curve):
            row[0].plot(curve["epoch"], curve[f"{split}/top1"], SPLIT_STYLE[split], label=split)
            row[1].plot(curve["epoch"], curve[f"{split}/loss"], SPLIT_STYLE[split], label=split)
        _mark_stop(row[0], curve, "val/top1", trial.stop_reason)
        _mark_stop(row[1], curve, "val/loss", trial.stop_reason)
        for ax in row:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        row[0].set(ylabel="top-1 accuracy (%)", xlabel="epoch")
        row[1].set(ylabel="loss (cross-entropy)", xlabel="epoch")
        row[0].set_title(_wrap(labels[trial.trial_id]), fontsize=10, loc="left")
        row[0].legend(loc="lower right", fontsize=9)
        row[1].legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _long_curves(study: StudyData, metric: str) -> pd.DataFrame:
    """Epoch rows reshaped to one line per (trial, split) for seaborn, with the variant."""
    epochs = study.epochs
    frames = []
    for split in _splits(epochs):
        part = epochs[["trial_id", "variant", "epoch", f"{split}/{metric}"]].rename(
            columns={f"{split}/{metric}": metric}
        )
        part["split"] = split
        frames.append(part)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def fig_variant_curves(study: StudyData, metric: str) -> Figure | None:
    """A panel per variant: train vs validation (and test) `metric`, mean and 95% CI over seeds."""
    if study.epochs.empty or study.epochs["variant"].astype(str).eq("").all():
        return None
    long = _long_curves(study, metric)
    order = list(dict.fromkeys(study.spec.get("variants", {}) or long["variant"].unique()))
    order = [v for v in order if v in set(long["variant"])]
    grid = sns.relplot(
        data=long,
        x="epoch",
        y=metric,
        hue="split",
        style="split",
        col="variant",
        col_order=order,
        col_wrap=min(4, len(order)),
        kind="line",
        errorbar=("ci", 95),
        height=2.6,
        aspect=1.25,
        facet_kws={"sharey": True},
    )
    grid.set_axis_labels("epoch", "top-1 accuracy (%)" if metric == "top1" else "loss")
    grid.set_titles("{col_name}")
    # Above the panels: at the right, the legend sits on the last row's tick labels.
    sns.move_legend(
        grid, "lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, title=None, frameon=False
    )
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    diverged = study.trials[study.trials["stop_reason"] == "diverged"]
    for variant, ax in grid.axes_dict.items():
        count = int((diverged["variant"] == variant).sum())
        if count:
            ax.text(
                0.02,
                0.95,
                f"{count} seed(s) diverged",
                transform=ax.transAxes,
                color="crimson",
                va="top",
                fontsize=9,
            )
    grid.figure.tight_layout()
    return grid.figure


def fig_lr_batch_heatmap(study: StudyData) -> Figure | None:
    """Best validation metric over learning rate x batch size (seed Q16); diverged cells marked."""
    lr, bs = CONFIG_PREFIX + "optim.lr", CONFIG_PREFIX + "batch_size"
    trials = study.trials
    if trials.empty or lr not in trials or bs not in trials:
        return None
    if trials[lr].nunique() < 2 or trials[bs].nunique() < 2 or trials[lr].nunique() > 12:
        return None
    scored = trials.assign(value=trials["best_metric"].astype(float))
    table = scored.pivot_table(index=lr, columns=bs, values="value", aggfunc="mean")
    table = table.sort_index(ascending=False)
    diverged = (
        scored.assign(d=scored["stop_reason"].eq("diverged"))
        .pivot_table(index=lr, columns=bs, values="d", aggfunc="sum")
        .reindex_like(table)
    )
    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 3, 0.9 * table.shape[0] + 2))
    annot = table.map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    annot = annot.where(diverged.fillna(0) == 0, annot + "\ndiverged")
    sns.heatmap(
        table,
        annot=annot,
        fmt="",
        cmap="viridis",
        ax=ax,
        cbar_kws={"label": f"best {study.metric} (mean over seeds)"},
    )
    ax.set(xlabel="batch size", ylabel="learning rate")
    ax.set_yticklabels([f"{v:g}" for v in table.index], rotation=0)
    fig.tight_layout()
    return fig


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def fig_factors(study: StudyData) -> Figure | None:
    """Best validation metric per searched factor: every trial, plus the mean and 95% CI."""
    keys = (["variant"] if study.has_variants() else []) + study.factor_keys()
    scored = study.trials.dropna(subset=["best_metric"])
    if not keys or scored.empty:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        values = scored[key]
        if _numeric(values) and values.nunique() > 8:
            sns.scatterplot(data=scored, x=key, y="best_metric", hue="stop_reason", ax=ax, s=40)
            if short(key) in LOG_KEYS:
                ax.set_xscale("log")
        else:
            present = set(values.astype(str))
            order = (
                [v for v in study.spec.get("variants", {}) if v in present]
                if key == "variant"
                else sorted(present, key=_natural)
            )
            data = scored.assign(**{key: values.astype(str)})
            sns.stripplot(
                data=data,
                x=key,
                y="best_metric",
                order=order,
                ax=ax,
                alpha=0.5,
                color="0.35",
                size=5,
                jitter=0.15,
            )
            sns.pointplot(
                data=data,
                x=key,
                y="best_metric",
                order=order,
                ax=ax,
                errorbar=("ci", 95),
                color="C0",
                linestyle="none",
                capsize=0.15,
                marker="D",
            )
            if len(order) > 4 or max(len(o) for o in order) > 8:
                ax.tick_params(axis="x", rotation=35)
                for label in ax.get_xticklabels():
                    label.set_horizontalalignment("right")
        ax.set(xlabel=short(key), ylabel=f"best {study.metric}")
        if ax.get_legend() is not None:
            ax.legend(fontsize=8, title=None)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _natural(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def overfitting_table(study: StudyData) -> pd.DataFrame:
    """Per trial: epoch of minimum validation loss, how far the loss rose after it (mean of the
    last quarter of epochs over the minimum), and the final train-validation accuracy gap.
    Flagged (seed Q18) when that rise exceeds 10%: the U shape of an overfitting run."""
    rows = []
    for trial_id, curve in study.epochs.groupby("trial_id"):
        loss = pd.to_numeric(curve["val/loss"], errors="coerce")
        if loss.notna().sum() < 2:
            continue
        best = loss.idxmin()
        final = curve.iloc[-1]
        # The tail mean, not the last value: one noisy epoch is not a U shape.
        tail = loss.iloc[-max(2, len(loss) // 4) :].mean()
        rise = float(tail / loss[best] - 1)
        rows.append(
            {
                "trial_id": trial_id,
                "epochs": int(final["epoch"]),
                "min_val_loss_epoch": int(curve.loc[best, "epoch"]),
                "min_val_loss": float(loss[best]),
                "final_val_loss": float(loss.iloc[-1]),
                "val_loss_rise": rise,
                "train_val_gap": float(final["train/top1"] - final["val/top1"]),
                "overfitting": rise > 0.10,
            }
        )
    return pd.DataFrame(rows)


def fig_overfitting(study: StudyData) -> Figure | None:
    table = overfitting_table(study)
    if table.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    sns.scatterplot(
        data=table,
        x="min_val_loss_epoch",
        y="val_loss_rise",
        hue="overfitting",
        palette={True: "crimson", False: "C0"},
        ax=axes[0],
        s=50,
    )
    axes[0].axhline(0.10, color="crimson", lw=0.8, ls="--")
    axes[0].set(
        xlabel="epoch of minimum validation loss",
        ylabel="late val loss / minimum - 1",
        title="U-shaped validation loss",
    )
    sns.scatterplot(
        data=table,
        x="epochs",
        y="train_val_gap",
        hue="overfitting",
        palette={True: "crimson", False: "C0"},
        ax=axes[1],
        s=50,
        legend=False,
    )
    axes[1].set(
        xlabel="epochs run",
        ylabel="train - val top-1 (points)",
        title="generalization gap at the last epoch",
    )
    fig.tight_layout()
    return fig


def fig_timing(study: StudyData) -> Figure | None:
    """Seconds per epoch and images/s against batch size, and compute spent per trial."""
    epochs, trials = study.epochs, study.trials
    if epochs.empty:
        return None
    bs = CONFIG_PREFIX + "batch_size"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    data = epochs.assign(batch_size=epochs[bs].astype(int))
    sns.pointplot(
        data=data,
        x="batch_size",
        y="time/epoch_s",
        ax=axes[0],
        errorbar=("ci", 95),
        native_scale=False,
    )
    axes[0].set(xlabel="batch size", ylabel="seconds per epoch (train + eval)")
    sns.pointplot(data=data, x="batch_size", y="time/images_per_s", ax=axes[1], errorbar=("ci", 95))
    axes[1].set(xlabel="batch size", ylabel="training images / s")
    spent = trials.sort_values("cpu_s", ascending=False)
    column = "gpu_s" if spent["gpu_s"].sum() > 0 else "cpu_s"
    axes[2].bar(range(len(spent)), spent[column] / 60, color="C2")
    axes[2].set(
        xlabel="trials (sorted)",
        ylabel=f"{column[:3].upper()}-minutes",
        title=f"total {spent[column].sum() / 3600:.2f} {column[:3].upper()}-hours",
    )
    axes[2].set_xticks([])
    fig.tight_layout()
    return fig


def asha_rungs(study: StudyData) -> pd.DataFrame:
    """Trials that reached each ASHA rung, and trial-epochs spent vs running all to the end."""
    sched = study.spec.get("scheduler") or {}
    if sched.get("name") != "asha" or study.trials.empty:
        return pd.DataFrame()
    top = int(sched.get("max_epochs") or study.trials["max_epochs"].max())
    rung, eta, rungs = (
        float(sched.get("grace_period", 1)),
        float(sched.get("reduction_factor", 3)),
        [],
    )
    while rung < top:
        rungs.append(int(rung))
        rung *= eta
    rungs.append(top)
    reached = [int((study.trials["epochs_run"] >= r).sum()) for r in rungs]
    return pd.DataFrame({"rung (epoch)": rungs, "trials reaching it": reached})


def fig_asha(study: StudyData) -> Figure | None:
    rungs = asha_rungs(study)
    if rungs.empty:
        return None
    spent = int(study.trials["epochs_run"].sum())
    full = int(study.trials["max_epochs"].sum())
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.barplot(
        data=rungs.astype({"rung (epoch)": str}),
        x="rung (epoch)",
        y="trials reaching it",
        ax=axes[0],
        color="C0",
    )
    axes[0].set_title("ASHA promotions")
    axes[1].barh(["every trial to the end", "ASHA (spent)"], [full, spent], color=["0.7", "C0"])
    axes[1].set(
        xlabel="trial-epochs", title=f"ASHA spent {spent / max(full, 1):.0%} of the full budget"
    )
    fig.tight_layout()
    return fig


def optuna_importances(study: StudyData) -> pd.Series:
    """Parameter importance with Optuna's PED-ANOVA evaluator on the finished trials."""
    import optuna

    space = study.spec.get("space") or {}
    trials = study.trials.dropna(subset=["best_metric"])
    if len(trials) < 4 or not space:
        return pd.Series(dtype=float)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {k: _optuna_distribution(v) for k, v in space.items()}
    records = []
    for _, row in trials.iterrows():
        params = {k: _native(row[CONFIG_PREFIX + k], dist) for k, dist in distributions.items()}
        records.append(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=float(row["best_metric"])
            )
        )
    optuna_study = optuna.create_study(direction="maximize" if study.mode == "max" else "minimize")
    optuna_study.add_trials(records)
    try:
        importances = optuna.importance.get_param_importances(
            optuna_study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    except (RuntimeError, ValueError, ZeroDivisionError):
        return pd.Series(dtype=float)
    return pd.Series(importances).sort_values()


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


def fig_optuna(study: StudyData) -> Figure | None:
    """Optimization history (each trial and the running best) and parameter importance."""
    if (study.spec.get("search") or {}).get("algorithm") != "optuna":
        return None
    trials = study.trials.dropna(subset=["best_metric"]).sort_values("trial_id")
    if trials.empty:
        return None
    importances = optuna_importances(study)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    order = np.arange(1, len(trials) + 1)
    running = (
        trials["best_metric"].cummax() if study.mode == "max" else trials["best_metric"].cummin()
    )
    axes[0].scatter(
        order, trials["best_metric"], c=[_reason_color(r) for r in trials["stop_reason"]], s=30
    )
    axes[0].plot(order, running, color="C1", label="best so far")
    axes[0].set(
        xlabel="trial (in order of creation)",
        ylabel=f"best {study.metric}",
        title="optimization history (red: stopped early or diverged)",
    )
    axes[0].legend(loc="lower right")
    if importances.empty:
        axes[1].text(
            0.5,
            0.5,
            "too few finished trials\nfor parameter importance",
            ha="center",
            va="center",
            transform=axes[1].transAxes,
        )
        axes[1].set_axis_off()
    else:
        axes[1].barh(importances.index, importances.values, color="C0")
        axes[1].set(xlabel="importance (PED-ANOVA)", title="parameter importance")
    fig.tight_layout()
    return fig


def _reason_color(reason: str) -> str:
    return "C0" if reason == "completed" else "crimson"


def fig_parallel(study: StudyData) -> Figure | None:
    """Parallel coordinates: each trial a line across its searched values, coloured by result."""
    keys = (["variant"] if study.has_variants() else []) + study.factor_keys()
    trials = study.trials.dropna(subset=["best_metric"])
    if len(keys) < 2 or len(trials) < 2:
        return None
    columns: dict[str, np.ndarray] = {}
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    for key in keys:
        values = trials[key]
        if _numeric(values):
            numbers = values.astype(float).to_numpy()
            if short(key) in LOG_KEYS and (numbers > 0).all():
                numbers = np.log10(numbers)
            low, high = numbers.min(), numbers.max()
            columns[key] = (
                (numbers - low) / (high - low) if high > low else np.full(len(numbers), 0.5)
            )
            ticks[key] = ([0, 1], [_fmt(values.min()), _fmt(values.max())])
        else:
            levels = sorted(values.astype(str).unique(), key=_natural)
            level_y = {v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}
            columns[key] = values.astype(str).map(level_y).to_numpy()
            ticks[key] = (list(level_y.values()), levels)
    metric = trials["best_metric"].to_numpy()
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(keys)), 4.5))
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(metric.min(), metric.max())
    for index in np.argsort(metric if study.mode == "max" else -metric):
        ax.plot(
            range(len(keys)),
            [columns[k][index] for k in keys],
            color=cmap(norm(metric[index])),
            alpha=0.8,
            lw=1.4,
        )
    for position, key in enumerate(keys):
        ax.axvline(position, color="0.6", lw=0.8)
        for tick, text in zip(*ticks[key], strict=True):
            ax.text(position + 0.03, tick, text, fontsize=8, va="center")
    ax.set_xticks(range(len(keys)), [short(k) for k in keys], rotation=20)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(keys) - 0.6)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {study.metric}")
    ax.set_title("search overview")
    fig.tight_layout()
    return fig


def fig_compare(studies: Sequence[StudyData]) -> Figure | None:
    """Several studies side by side: validation accuracy of each study's best trial per epoch."""
    if len(studies) < 2:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for study in studies:
        best = best_trials(study, 1)
        if best.empty:
            continue
        curve = study.epochs[study.epochs["trial_id"] == best.iloc[0]["trial_id"]]
        ax.plot(curve["epoch"], curve["val/top1"], label=study.name)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="best trial of each study")
    ax.legend()
    fig.tight_layout()
    return fig
