"""The report's section on a population-based training study: what PBT changed and when. Each
member's hyperparameters against epochs with its exploits marked, the best final model's lineage
drawn as the one schedule that made it, the population's validation curves, and the exploits as
a table. Read from the epoch rows' ``config/*`` (the values in force at each epoch) and
``lineage/`` (see :mod:`cifartune.store.lineage`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes

from cifartune.storage import Location
from cifartune.store.columns import CONFIG_PREFIX
from cifartune.store.lineage import FROM, TO, final_values, lineage_schedule, spans
from cifartune.store.study_data import StudyData

from .document import Section, Table
from .naming import LOG_KEYS, fmt, metric_digits, short
from .plotting import Plot, join, panel_grid, varies, whole_epochs

TITLE = "Population-based training"
BEST = "black"  # the best final model's lineage, over the members' colours
NAMED_MEMBERS = 12  # a legend beyond this many members would hide the curves


def shown_path(directory: Location) -> str:
    """The study's directory as a reader can use it: relative to here when below here."""
    if not directory.local:
        return str(directory)
    try:
        return str(directory.local_path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(directory)


def _mutated(study: StudyData) -> list[str]:
    keys = (study.spec.get("scheduler") or {}).get("mutations") or {}
    return [k for k in keys if CONFIG_PREFIX + k in study.epochs]


def _colors(study: StudyData) -> dict[str, tuple]:
    members = sorted(study.epochs["trial_id"].unique())
    palette = plt.get_cmap("tab20" if len(members) > 10 else "tab10")
    return {trial: palette(i % palette.N) for i, trial in enumerate(members)}


def best_lineage(study: StudyData) -> tuple[str, pd.DataFrame] | None:
    """The best final model's trial and the epoch rows of the chain of trials that trained it,
    one per epoch, with a ``trained_by`` column."""
    ranked = final_values(study.epochs, study.metric, study.mode)
    if ranked.empty:
        return None
    best = str(ranked.index[0])
    rows = study.epochs.set_index(["trial_id", "epoch"], drop=False)
    chain = lineage_schedule(study.epochs, study.lineage, best)
    frame = pd.DataFrame([rows.loc[(trainer, epoch)] for epoch, trainer in chain])
    return best, frame.assign(trained_by=[trainer for _, trainer in chain])


def _exploit_points(study: StudyData, column: str) -> pd.DataFrame:
    """Where each exploit shows on a member's curve: its first epoch on the donor's weights."""
    if study.lineage.empty:
        return pd.DataFrame(columns=["trial_id", "epoch", column])
    after = study.lineage.assign(epoch=study.lineage["epoch"] + 1)[["trial_id", "epoch"]]
    return after.merge(study.epochs[["trial_id", "epoch", column]], on=["trial_id", "epoch"])


def _draw(study: StudyData, ax: Axes, column: str, chain: pd.DataFrame) -> None:
    colors = _colors(study)
    for trial, rows in study.epochs.groupby("trial_id"):
        ax.plot(rows["epoch"], rows[column], "-", color=colors[trial], lw=1, alpha=0.7, label=trial)
    points = _exploit_points(study, column)
    ax.scatter(
        points["epoch"],
        points[column],
        marker="v",
        s=40,
        zorder=3,
        color=[colors[t] for t in points["trial_id"]],
        edgecolor="k",
        lw=0.5,
    )
    ax.plot(chain["epoch"], chain[column], "-", color=BEST, lw=2.4, zorder=4, label="best lineage")
    whole_epochs(ax)


def fig_schedules(study: StudyData, chain: pd.DataFrame) -> Plot | None:
    """A panel per mutated key that varies: each member's value at each epoch."""
    keys = [k for k in _mutated(study) if varies(study.epochs[CONFIG_PREFIX + k])]
    if not keys:
        return None
    fig, axes = panel_grid(len(keys), 2, 5.5, 3.4)
    for key, ax in zip(keys, axes, strict=True):
        _draw(study, ax, CONFIG_PREFIX + key, chain)
        ax.set(xlabel="epoch", ylabel=short(key), yscale="log" if key in LOG_KEYS else "linear")
    fig.tight_layout()
    caption = join(
        [
            "Each member's hyperparameters in force at each epoch (a colour per member), a "
            "triangle where an exploit gave it another member's weights and new values",
            f"black: the schedule that made the best final model, `{chain['trial_id'].iloc[-1]}`, "
            "following its exploits back to the first epoch",
        ]
    )
    return Plot(fig, caption, [f"{short(k)} per epoch" for k in keys])


def fig_population(study: StudyData, chain: pd.DataFrame) -> Plot | None:
    metric = study.metric
    if metric not in study.epochs or study.epochs["epoch"].max() < 2:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    _draw(study, ax, metric, chain)
    ax.set(xlabel="epoch", ylabel=metric)
    if study.epochs["trial_id"].nunique() <= NAMED_MEMBERS:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    caption = join(
        [
            f"The population's {metric} per epoch (a colour per member, as in the schedules), a "
            "triangle at a member's first epoch on the weights it took",
            "black: the best final model's own history, epoch by epoch along its lineage",
        ]
    )
    return Plot(fig, caption, [f"{metric} per epoch"])


def _changes(row: pd.Series, keys: list[str]) -> str:
    moved = [(k, row.get(FROM + k), row.get(TO + k)) for k in keys]
    return "; ".join(f"{short(k)} {fmt(a)} → {fmt(b)}" for k, a, b in moved if a != b) or "–"


def exploit_table(study: StudyData) -> pd.DataFrame:
    keys = _mutated(study)
    lineage = study.lineage.sort_values(["epoch", "trial_id"])
    return pd.DataFrame(
        {
            "after epoch": lineage["epoch"].astype(int),
            "trial": lineage["trial_id"],
            "took the weights of": lineage["donor_trial_id"],
            "changes": [_changes(row, keys) for _, row in lineage.iterrows()],
        }
    )


def schedule_table(study: StudyData, chain: pd.DataFrame) -> pd.DataFrame:
    """The best final model's schedule: a row per span of epochs one trial trained."""
    keys = _mutated(study)
    trained_by = list(zip(chain["epoch"].astype(int), chain["trained_by"], strict=True))
    rows = []
    for first, last, trial in spans(trained_by):
        start, end = (chain[chain["epoch"] == e].iloc[0] for e in (first, last))
        digits = metric_digits(study.metric)
        rows.append(
            {
                "epochs": f"{first}–{last}",
                "trained by": trial,
                **{short(k): fmt(start[CONFIG_PREFIX + k]) for k in keys},
                study.metric: f"{start[study.metric]:.{digits}f} → {end[study.metric]:.{digits}f}",
            }
        )
    return pd.DataFrame(rows)


def population_section(
    study: StudyData, add: Callable[[Section, str, Plot | None], None]
) -> Section | None:
    """The section, or None for a study that is not PBT; `add(section, stem, plot)` places a
    figure."""
    found = best_lineage(study) if study.pbt and not study.epochs.empty else None
    if found is None:
        return None
    best, chain = found
    scheduler = study.spec["scheduler"]
    section = Section(f"{TITLE} — {study.name}")
    section.paragraphs.append(
        f"{study.epochs['trial_id'].nunique()} members; every "
        f"{scheduler.get('perturbation_interval')} epochs the bottom "
        f"{fmt(scheduler.get('quantile_fraction'))} of the population by {study.metric} took "
        "the weights and optimizer state of a member of the top fraction and perturbed its "
        "hyperparameters (resampled with probability "
        f"{fmt(scheduler.get('resample_probability'))}): {len(study.lineage)} exploits. Each "
        "epoch row holds the values in force at that epoch; the trial tables and figures of "
        "this report name each member by the values in force at its best epoch."
    )
    value = chain[study.metric].iloc[-1]
    section.paragraphs.append(
        f"The best final model is trial `{best}`'s, with {study.metric} "
        f"{value:.{metric_digits(study.metric)}f} at its last epoch. "
        f"`cifartune train --replay {shown_path(study.directory)}/{best}` trains its schedule "
        "again from "
        "scratch, without Ray."
    )
    section.tables.append(
        Table(f"The schedule of `{best}`, along its lineage", schedule_table(study, chain))
    )
    add(section, "pbt_schedules", fig_schedules(study, chain))
    add(section, "pbt_population", fig_population(study, chain))
    if not study.lineage.empty:
        section.tables.append(Table("Exploits", exploit_table(study)))
    section.paragraphs.append(
        "In the Optuna mirror (`cifartune export-optuna`) each member is one Optuna trial: its "
        "params are the hyperparameters it started with (what the search drew), its "
        "`at_best_epoch` user attribute the values in force at its best epoch, its intermediate "
        "values its own epoch rows, and its value its best epoch's; its exploits are its "
        "`exploits` user attribute, e.g. '2 from trial a, 4 from trial b'."
    )
    return section
