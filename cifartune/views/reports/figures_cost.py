"""Figures of what trials cost and how they ended: time per epoch, ASHA's savings, overfitting.
Panels whose axis would hold one constant value are left out, and so is their part of the
caption."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from cifartune.store.columns import CONFIG_PREFIX
from cifartune.store.study_data import StudyData

from .naming import compute_seconds
from .plotting import Plot, join, panel_grid, t_errorbar, varies
from .stats import RISE, overfitting_table


def fig_timing(study: StudyData) -> Plot | None:
    """Seconds per epoch and images/s against batch size (when it varies), compute per trial."""
    epochs, trials = study.epochs, study.trials
    if epochs.empty:
        return None
    bs = CONFIG_PREFIX + "batch_size"
    per_batch = bs in epochs and varies(epochs[bs])
    per_trial = len(trials) > 1
    count = 2 * per_batch + per_trial
    if not count:
        return None
    fig, axes = panel_grid(count, 3, 5, 4)
    panels = []
    if per_batch:
        # The mean per trial, so that each seed counts once in the interval.
        data = epochs.groupby("trial_id")[[bs, "time/epoch_s", "time/train_s", "time/images_per_s"]]
        data = data.mean().assign(batch_size=lambda f: f[bs].astype(int))
        for column, text in (("time/epoch_s", "epoch (train + eval)"), ("time/train_s", "train")):
            sns.pointplot(
                data=data,
                x="batch_size",
                y=column,
                ax=axes[0],
                errorbar=t_errorbar,
                label=text,
                color="C0" if column == "time/epoch_s" else "C2",
            )
        axes[0].set(xlabel="batch size", ylabel="seconds per epoch")
        axes[0].legend(fontsize=8)
        sns.pointplot(
            data=data, x="batch_size", y="time/images_per_s", ax=axes[1], errorbar=t_errorbar
        )
        axes[1].set(xlabel="batch size", ylabel="training images / s")
        panels += [
            "seconds per epoch (with evaluation, and training alone) against batch size",
            "training images per second against batch size",
        ]
    if per_trial:
        ax = axes[-1]
        seconds, what = compute_seconds(trials)
        unit, how = what.split()
        spent = seconds.sort_values(ascending=False)
        # One filled outline rather than a bar per trial: as quick at 10,000 trials as at 10.
        ax.stairs((spent / 60).to_numpy(), fill=True, color="C2")
        ax.set(
            xlabel=f"{len(spent)} trials, most expensive first",
            ylabel=f"{unit}-minutes {how}",
            title=f"total {spent.sum() / 3600:.2f} {unit}-hours {how}",
        )
        ax.set_xticks([])
        panels.append(f"{unit}-minutes {how} per trial, most expensive first")
    fig.tight_layout()
    parts = list(panels)
    if per_batch:
        parts.insert(2, "means over trials with their 95% t-intervals (from 3 trials on)")
    else:
        parts.append("one batch size only: no time against batch size")
    return Plot(fig, join(parts), panels)


def fig_asha(study: StudyData, rungs: list[int]) -> Plot | None:
    """Trials reaching each ASHA rung, and the trial-epochs spent against running all."""
    if not rungs or study.trials.empty:
        return None
    top = int(pd.to_numeric(study.trials["max_epochs"]).max())
    levels = [*rungs, top]
    reached = [int((study.trials["epochs_run"] >= r).sum()) for r in levels]
    spent = int(study.trials["epochs_run"].sum())
    full = int(study.trials["max_epochs"].sum())
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].bar([f"epoch {r}" for r in levels], reached, color="C0")
    axes[0].set(ylabel="trials reaching it", title="ASHA rungs (last: end of training)")
    axes[1].barh(["every trial to the end", "ASHA (spent)"], [full, spent], color=["0.7", "C0"])
    axes[1].set(
        xlabel="trial-epochs", title=f"ASHA spent {spent / max(full, 1):.0%} of the full budget"
    )
    fig.tight_layout()
    panels = [
        "ASHA: trials reaching each rung (the last bar: the end of training)",
        "the trial-epochs ASHA spent against running every trial to the end",
    ]
    return Plot(fig, join(panels), panels)


def fig_overfitting(study: StudyData) -> Plot | None:
    """The overfitting flag's numbers per trial: where the validation loss bottomed out, how far
    the last epochs stayed above it, and how much training accuracy still rose."""
    table = overfitting_table(study)
    table = table[table["judged"]]
    if len(table) < 2:
        return None
    table = table.assign(
        gain=table["train_top1_final"] - table["train_top1_at_min"],
        flag=table["overfitting"].map({True: "overfits", False: "does not"}),
    )
    palette = {"overfits": "crimson", "does not": "C0"}
    panels = [
        (x, text)
        for x, text in (
            ("min_epoch", "epoch of minimum validation loss"),
            ("gain", "train top-1 gain after the minimum (points)"),
        )
        if varies(table[x])
    ]
    if not panels or not varies(table["rise"]):
        return None
    fig, axes = panel_grid(len(panels), 2, 6, 4.2)
    for ax, (x, text) in zip(axes, panels, strict=True):
        sns.scatterplot(data=table, x=x, y="rise", hue="flag", palette=palette, ax=ax, s=50)
        ax.axhline(RISE, color="crimson", lw=0.8, ls="--")
        ax.set(xlabel=text, ylabel="lowest late val loss / minimum - 1")
        ax.legend(fontsize=8, title=None)
    fig.tight_layout()
    flagged = int(table["overfitting"].sum())
    caption = join(
        [
            f"The overfitting flag's numbers for the {len(table)} judged trials: how far the "
            "last epochs' lowest validation loss stays above the run's minimum (dashed: the "
            f"{RISE:.0%} threshold), against " + " and against ".join(text for _, text in panels),
            f"red: flagged as overfitting ({flagged}), blue: not" if flagged else "none flagged",
        ]
    )
    return Plot(fig, caption, [f"rise over the minimum against {text}" for _, text in panels])
