"""Optuna's views of a search: the optimization history and PED-ANOVA parameter importance,
computed by Optuna itself on an in-memory copy of the trials (on the common budget, see
:func:`~cifartune.reports.stats.budget_values`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from cifartune.store.columns import CONFIG_PREFIX
from cifartune.store.study_data import StudyData

from .figures_search import scored
from .naming import STOP_NAMES, short
from .plotting import STOP_COLOR, Plot, join, stop_colors_text
from .stats import budget_note

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

# PED-ANOVA compares the best trials with the rest: with fewer it has nothing to compare.
MIN_FOR_IMPORTANCE = 5


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
    trials, _ = scored(study)
    if len(trials) < MIN_FOR_IMPORTANCE or not space:
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


def fig_optuna(study: StudyData, importances: pd.DataFrame) -> Plot | None:
    """Optimization history on the common budget (each trial and the best so far) and parameter
    importance with its leave-one-trial-out range (when PED-ANOVA could rank the parameters)."""
    if (study.spec.get("search") or {}).get("algorithm") != "optuna":
        return None
    trials, label = scored(study)
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
    drawn = [f"optimization history: {label} per trial and the best so far"]
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
        drawn.append("PED-ANOVA parameter importance")
    fig.tight_layout()
    if panels == 2:
        importance = (
            "PED-ANOVA parameter importance (whiskers: its range when any one trial is left out)"
        )
    elif len(trials) < MIN_FOR_IMPORTANCE:
        importance = (
            f"no parameter importance: {len(trials)} scored trials, PED-ANOVA needs "
            f"{MIN_FOR_IMPORTANCE}"
        )
    else:
        importance = "no parameter importance: PED-ANOVA could not rank these trials' parameters"
    caption = join(
        [
            f"Optuna: {label} of each trial in order of creation "
            f"({stop_colors_text(trials['stop_reason'])}) and the best so far (orange)",
            importance,
            budget_note(study),
        ]
    )
    return Plot(fig, caption, drawn)
