"""Figures of curves over epochs: best configurations, variants against their reference, every
trial with ASHA's rungs, studies side by side. Each returns None when it would show nothing."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..results import StudyData
from .naming import STOP_NAMES, config_label
from .plotting import (
    SPLIT_STYLE,
    STOP_COLOR,
    data_limits,
    draw_runs,
    panel_grid,
    whole_epochs,
)


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


def fig_best_curves(study: StudyData, n: int = 3) -> Figure | None:
    """Accuracy and loss per epoch of the n best configurations, train vs validation (and test)."""
    groups = best_groups(study, n)
    if not groups or not _multi_epoch(study):
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.2 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups, strict=True):
        curves = study.epochs[study.epochs["group"] == group]
        members = study.trials[study.trials["group"] == group]
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
        for metric, ax in zip(("top1", "loss"), row, strict=True):
            values = pd.concat([curves[f"{s}/{metric}"] for s in _splits(curves)])
            limits = data_limits(values, 0.97 if metric == "loss" else 1.0)
            if limits:
                ax.set_ylim(*limits)
        seeds = len(members)
        row[0].set_title(
            f"{config_label(members.iloc[0], study)} ({seeds} seed{'s' if seeds > 1 else ''})",
            fontsize=10,
            loc="left",
        )
        row[0].legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return fig


def fig_variant_curves(study: StudyData, metric: str) -> Figure | None:
    """A panel per variant: its train and validation (and test) `metric` per epoch, with the
    first variant's (the reference, e.g. the baseline) drawn in grey behind the others."""
    if not study.has_variants() or not _multi_epoch(study):
        return None
    epochs = study.epochs
    order = [v for v in study.spec["variants"] if v in set(epochs["variant"])]
    if not order:
        return None
    reference = epochs[epochs["variant"] == order[0]]
    splits = _splits(epochs)
    fig, axes = panel_grid(len(order), 4, 3.6, 2.9)
    for ax, variant in zip(axes, order, strict=True):
        curves = epochs[epochs["variant"] == variant]
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
        title = variant + (f" ({diverged} diverged)" if diverged else "")
        ax.set_title(title, fontsize=10, color="crimson" if diverged else "black")
        ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)" if metric == "top1" else "loss")
        whole_epochs(ax)
    values = pd.concat([epochs[f"{s}/{metric}"] for s in splits])
    limits = data_limits(values, 0.95 if metric == "loss" else 1.0)
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
    return fig


def fig_trial_curves(study: StudyData, rungs: Sequence[int]) -> Figure | None:
    """Every trial's validation metric per epoch (intermediate values), coloured by how it
    stopped; at each ASHA rung, the lowest value among the trials that went on past it."""
    if not _multi_epoch(study) or study.trials.empty:
        return None
    metric = study.metric
    reasons = study.trials.set_index("trial_id")["stop_reason"]
    fig, ax = plt.subplots(figsize=(10, 4.4))
    for trial_id, curve in study.epochs.groupby("trial_id"):
        reason = reasons.get(trial_id, "completed")
        ax.plot(curve["epoch"], curve[metric], color=STOP_COLOR.get(reason, "C0"), lw=1, alpha=0.7)
        if reason == "diverged":
            finite = curve[np.isfinite(curve[metric].astype(float))]
            if not finite.empty:
                ax.plot(finite["epoch"].iloc[-1], finite[metric].iloc[-1], "X", color="crimson")
    for rung in rungs:
        ax.axvline(rung, color="0.3", ls=":", lw=1)
        went_on = study.trials[study.trials["epochs_run"] > rung]["trial_id"]
        at_rung = study.epochs[
            (study.epochs["epoch"] == rung) & study.epochs["trial_id"].isin(went_on)
        ][metric]
        if len(at_rung):
            bar = at_rung.min() if study.mode == "max" else at_rung.max()
            ax.plot([rung - 0.3, rung + 0.3], [bar, bar], color="k", lw=2.5)
            ax.annotate(
                f"rung {rung}: {bar:.1f}",
                (rung, bar),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
            )
    present = [r for r in STOP_COLOR if r in set(reasons)]
    ax.legend(
        [Line2D([], [], color=STOP_COLOR[r]) for r in present],
        [STOP_NAMES.get(r, r) for r in present],
        loc="lower right",
        fontsize=9,
    )
    ax.set(xlabel="epoch", ylabel=metric, title=f"every trial's {metric} ({len(reasons)} trials)")
    whole_epochs(ax)
    fig.tight_layout()
    return fig


def fig_compare(studies: Sequence[StudyData]) -> Figure | None:
    """Several studies side by side: validation curves of each study's best configuration."""
    drawn = [s for s in studies if best_groups(s, 1) and _multi_epoch(s)]
    if len(drawn) < 2:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for index, study in enumerate(drawn):
        group = best_groups(study, 1)[0]
        curves = study.epochs[study.epochs["group"] == group]
        draw_runs(ax, curves, "val/top1", color=f"C{index}", label=study.name)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="best configuration of each study")
    whole_epochs(ax)
    ax.legend()
    fig.tight_layout()
    return fig
