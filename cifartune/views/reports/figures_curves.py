"""Figures of curves over epochs: best configurations, variants against their reference, every
trial with ASHA's rungs, studies side by side. Each returns None when it would show nothing,
else the figure with a caption of what it drew."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cifartune.store.study_data import StudyData

from .naming import STOP_NAMES, config_label, metric_digits
from .plotting import (
    SPLIT_STYLE,
    STYLE_NAMES,
    Plot,
    band_note,
    data_limits,
    draw_runs,
    join,
    panel_grid,
    splits_text,
    whole_epochs,
)
from .population import best_lineage

# Line style of a trial by how it ended (colour is its configuration); a diverged trial also
# gets a cross at its last finite value.
END_STYLE = {"completed": "-", "early-stopped": "--", "diverged": "-", "error": ":"}
OTHER_END_STYLE = "-."  # running, interrupted
# Up to this many configurations get a colour each and a name in the legend; beyond, names
# would hide the curves and colours repeat, so the caption points to the All trials table.
NAMED_CONFIGURATIONS = 10
# Curves drawn one by one at most; a larger study's best are drawn over a band of them all.
DRAWN_CURVES = 100


def _splits(frame: pd.DataFrame) -> list[str]:
    return [
        s
        for s in ("train", "val", "test")
        if f"{s}/top1" in frame and pd.to_numeric(frame[f"{s}/top1"], errors="coerce").notna().any()
    ]


def _multi_epoch(study: StudyData) -> bool:
    return not study.epochs.empty and int(study.epochs["epoch"].max()) >= 2


def best_groups(study: StudyData, n: int) -> list[str]:
    """The n best configurations (seed repeats grouped), by mean best validation metric."""
    scored = study.trials.dropna(subset=["best_metric"])
    means = scored.groupby("group")["best_metric"].mean()
    return list(means.sort_values(ascending=study.mode == "min").index[:n])


def _seeds(epochs: pd.DataFrame) -> int:
    return int(epochs["trial_id"].nunique())


def fig_best_curves(study: StudyData, n: int = 3) -> Plot | None:
    """Accuracy and loss per epoch of the n best configurations, train vs validation (and test)."""
    groups = best_groups(study, n)
    if not groups or not _multi_epoch(study):
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.2 * len(groups)), squeeze=False)
    panels, drawn, seeds = [], set(), []
    for row, group in zip(axes, groups, strict=True):
        curves = study.epochs[study.epochs["group"] == group]
        members = study.trials[study.trials["group"] == group]
        label = config_label(members.iloc[0], study)
        drawn |= set(_splits(curves))
        seeds.append(_seeds(curves))
        for metric, ax in zip(("top1", "loss"), row, strict=True):
            for index, split in enumerate(_splits(curves)):
                draw_runs(
                    ax,
                    curves,
                    f"{split}/{metric}",
                    color=f"C{index}",
                    style=SPLIT_STYLE[split],
                    label=split,
                )
            whole_epochs(ax)
            ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)" if metric == "top1" else "loss")
            values = pd.concat([curves[f"{s}/{metric}"] for s in _splits(curves)])
            limits = data_limits(values, 0.97 if metric == "loss" else 1.0)
            if limits:
                ax.set_ylim(*limits)
            panels.append(f"{label}: {'top-1 accuracy' if metric == 'top1' else 'loss'}")
        count = len(members)
        title = f"{label} ({count} seed{'s' if count > 1 else ''})"
        row[0].set_title(title, fontsize=10, loc="left")
        row[0].legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    many = len(groups) > 1
    caption = join(
        [
            f"The {len(groups)} best configuration{'s' if many else ''} by mean best "
            f"{study.metric}{', one row each' if many else ''}: top-1 accuracy (left) and loss "
            "(right) per epoch",
            splits_text(drawn),
            band_note(seeds),
        ]
    )
    return Plot(fig, caption, panels)


def fig_variant_curves(study: StudyData, metric: str) -> Plot | None:
    """A panel per variant: its train and validation (and test) `metric` per epoch, with the
    first variant's (the reference, e.g. the baseline) drawn in grey behind the others."""
    if not study.has_variants() or not _multi_epoch(study):
        return None
    epochs = study.epochs
    order = [v for v in study.spec["variants"] if v in set(epochs["variant"])]
    if not order:
        return None
    name = "top-1 accuracy" if metric == "top1" else "loss"
    reference = epochs[epochs["variant"] == order[0]]
    splits = _splits(epochs)
    fig, axes = panel_grid(len(order), 4, 3.6, 2.9)
    seeds, any_diverged = [], False
    for ax, variant in zip(axes, order, strict=True):
        curves = epochs[epochs["variant"] == variant]
        seeds.append(_seeds(curves))
        if variant != order[0]:
            for split in splits:
                draw_runs(
                    ax,
                    reference,
                    f"{split}/{metric}",
                    color="0.6",
                    style=SPLIT_STYLE[split],
                    seeds=False,
                )
        for index, split in enumerate(splits):
            draw_runs(ax, curves, f"{split}/{metric}", color=f"C{index}", style=SPLIT_STYLE[split])
        diverged = int(
            (study.trials[study.trials["variant"] == variant]["stop_reason"] == "diverged").sum()
        )
        any_diverged |= bool(diverged)
        title = variant + (f" ({diverged} diverged)" if diverged else "")
        ax.set_title(title, fontsize=10, color="crimson" if diverged else "black")
        ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)" if metric == "top1" else "loss")
        whole_epochs(ax)
    values = pd.concat([epochs[f"{s}/{metric}"] for s in splits])
    # Losses: the top of the axis is the bulk of the values (a first-epoch blow-up would
    # flatten every other curve); the caption says so only when it did cut something off.
    limits = data_limits(values, 0.95 if metric == "loss" else 1.0)
    clipped = limits is not None and pd.to_numeric(values, errors="coerce").max() > limits[1]
    for ax in axes:
        if limits:
            ax.set_ylim(*limits)
    handles = [Line2D([], [], color=f"C{i}", ls=SPLIT_STYLE[s]) for i, s in enumerate(splits)]
    labels = list(splits)
    if len(order) > 1:
        handles.append(Line2D([], [], color="0.6"))
        labels.append(f"{order[0]} (reference)")
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels))
    fig.tight_layout()
    caption = join(
        [
            f"Each variant's {name} per epoch, one panel per variant ({len(order)})",
            splits_text(splits),
            f"grey: the {order[0]} variant (the reference) behind the others"
            if len(order) > 1
            else "",
            "a red title counts the variant's diverged seeds" if any_diverged else "",
            band_note(seeds),
            "the y-axis is clipped to the bulk of the values" if clipped else "",
        ]
    )
    return Plot(fig, caption, [f"{v}: {name}" for v in order])


def _best_trials(study: StudyData, n: int) -> pd.Series:
    """The ids of the `n` trials with the best values of the study metric."""
    scored = study.trials.dropna(subset=["best_metric"])
    ranked = scored.sort_values("best_metric", ascending=study.mode == "min", kind="stable")
    return ranked["trial_id"].head(n)


def _draw_spread(ax: Axes, epochs: pd.DataFrame, metric: str) -> None:
    """The median and 10th-90th percentile band per epoch over every trial that reached it."""
    values = epochs[["epoch", metric]].astype(float)
    values = values[np.isfinite(values[metric])]
    band = values.groupby("epoch")[metric].quantile([0.1, 0.5, 0.9]).unstack()
    ax.fill_between(band.index, band[0.1], band[0.9], color="0.85", lw=0, zorder=0)
    ax.plot(band.index, band[0.5], color="0.45", lw=1.5, ls=(0, (1, 1)), zorder=1)


def fig_trial_curves(study: StudyData, rungs: Sequence[int]) -> Plot | None:
    """Every trial's validation metric per epoch (intermediate values), coloured by its
    configuration and styled by how it stopped; at each ASHA rung, the worst value among the
    trials that went on past it. Past DRAWN_CURVES trials, the best are drawn over a band that
    summarises them all."""
    if not _multi_epoch(study) or study.trials.empty:
        return None
    metric = study.metric
    trials = study.trials.set_index("trial_id")
    total = study.epochs["trial_id"].nunique()
    summarised = total > DRAWN_CURVES
    fig, ax = plt.subplots(figsize=(10, 4.4))
    drawn = study.epochs
    if summarised:
        _draw_spread(ax, study.epochs, metric)
        drawn = drawn[drawn["trial_id"].isin(_best_trials(study, DRAWN_CURVES))]
    groups = list(dict.fromkeys(drawn["group"]))
    named = len(groups) <= NAMED_CONFIGURATIONS
    palette = sns.color_palette("tab10" if named else "husl", len(groups))
    colors = dict(zip(groups, palette, strict=True))
    ends = set()
    for trial_id, curve in drawn.groupby("trial_id"):
        reason = str(trials["stop_reason"].get(trial_id, ""))
        ends.add(reason)
        color = colors[curve["group"].iloc[0]]
        style = END_STYLE.get(reason, OTHER_END_STYLE)
        ax.plot(curve["epoch"], curve[metric], color=color, ls=style, lw=1, alpha=0.8)
        if reason == "diverged":
            finite = curve[np.isfinite(curve[metric].astype(float))]
            if not finite.empty:
                ax.plot(finite["epoch"].iloc[-1], finite[metric].iloc[-1], "X", color="crimson")
    bars = 0
    for rung in rungs:
        ax.axvline(rung, color="0.3", ls=":", lw=1)
        went_on = study.trials[study.trials["epochs_run"] > rung]["trial_id"]
        at_rung = study.epochs[
            (study.epochs["epoch"] == rung) & study.epochs["trial_id"].isin(went_on)
        ][metric]
        if len(at_rung):
            bars += 1
            bar = at_rung.min() if study.mode == "max" else at_rung.max()
            ax.plot([rung - 0.3, rung + 0.3], [bar, bar], color="k", lw=2.5)
            ax.annotate(
                f"rung {rung}: {bar:.{metric_digits(metric)}f}",
                (rung, bar),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
            )
    first = trials.reset_index().drop_duplicates("group").set_index("group")
    handles: list[Artist] = []
    labels: list[str] = []
    if named and len(groups) > 1:
        for group in groups:
            handles.append(Line2D([], [], color=colors[group]))
            labels.append(config_label(first.loc[group], study) if group in first.index else "?")
    present = sorted(ends, key=lambda r: list(END_STYLE).index(r) if r in END_STYLE else 99)
    for reason in present:
        handle = Line2D([], [], color="0.3", ls=END_STYLE.get(reason, OTHER_END_STYLE))
        if reason == "diverged":
            handle.set(marker="X", markerfacecolor="crimson", markeredgecolor="crimson")
        handles.append(handle)
        labels.append(STOP_NAMES.get(reason, reason or "not in the trial table"))
    if summarised:
        handles += [Patch(color="0.85"), Line2D([], [], color="0.45", ls=(0, (1, 1)))]
        labels += [f"all {total:,} trials: 10th-90th percentile", "all trials: median"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    shown = f"the {DRAWN_CURVES} best of {total:,} trials'" if summarised else "every trial's"
    ax.set(xlabel="epoch", ylabel=metric, title=f"{shown} {metric}")
    whole_epochs(ax)
    fig.tight_layout()
    if len(groups) == 1:
        colour = "one configuration, one colour"
    elif named:
        colour = f"one colour per configuration ({len(groups)}, named in the legend)"
    else:
        colour = (
            f"one colour per configuration ({len(groups)}: too many to name; the trials "
            "table lists them)"
        )
    # A diverged trial is told by its cross, not by its (solid) line.
    styles = ", ".join(
        f"{STYLE_NAMES[END_STYLE.get(r, OTHER_END_STYLE)]}: {STOP_NAMES.get(r, r or 'other')}"
        for r in present
        if r != "diverged"
    )
    caption = join(
        [
            f"Every trial's {metric} per epoch ({total} trials)"
            if not summarised
            else f"The {DRAWN_CURVES} best trials' {metric} per epoch, of {total:,}: at each "
            "epoch the grey band spans the middle 80% of the trials that reached it and the "
            "dotted grey line is their median",
            colour,
            f"line style by how the trial ended ({styles})" if styles else "",
            "a red cross marks a diverged trial's last finite value" if "diverged" in ends else "",
            f"dotted vertical lines are ASHA's rungs (epochs {', '.join(map(str, rungs))})"
            if rungs
            else "",
            "at a rung, the black bar is the worst value among the trials that went on past it"
            if bars
            else "",
        ]
    )
    return Plot(fig, caption, [f"{shown} {metric} per epoch"])


def _best_curves(study: StudyData) -> pd.DataFrame:
    """The epoch rows of a study's best configuration, its seeds; of a PBT study, those of the
    chain of members that trained its best final model, as one run."""
    if study.pbt:
        found = best_lineage(study)
        if found is not None:
            best, chain = found
            return chain.assign(trial_id=best)
    return study.epochs[study.epochs["group"] == best_groups(study, 1)[0]]


def fig_compare(studies: Sequence[StudyData]) -> Plot | None:
    """Several studies side by side: validation curves of each study's best configuration."""
    drawn = [s for s in studies if best_groups(s, 1) and _multi_epoch(s)]
    if len(drawn) < 2:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    seeds = []
    for index, study in enumerate(drawn):
        curves = _best_curves(study)
        seeds.append(_seeds(curves))
        draw_runs(ax, curves, "val/top1", color=f"C{index}", label=study.name)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="best configuration of each study")
    whole_epochs(ax)
    ax.legend()
    fig.tight_layout()
    left_out = [s.name for s in studies if all(s is not d for d in drawn)]
    caption = join(
        [
            "Validation top-1 per epoch of each study's best configuration (by the study's own "
            f"selection metric): {', '.join(s.name for s in drawn)}",
            "of a population-based training study, its best final model along its lineage (the "
            "epochs of the members it descends from)"
            if any(s.pbt for s in drawn)
            else "",
            f"not drawn (no result over 2 or more epochs): {', '.join(left_out)}"
            if left_out
            else "",
            band_note(seeds),
        ]
    )
    return Plot(fig, caption, ["validation top-1 per epoch"])
