"""The measured numbers the seed findings are judged by: the seeds of one configuration (test
scores, overfitting numbers, failures) and the claims that compare two of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..results import CONFIG_PREFIX, StudyData
from .stats import Estimate, difference, estimate, fmt_estimate, overfitting_table
from .verdicts import Check, Outcome, effect

LR, BS = CONFIG_PREFIX + "optim.lr", CONFIG_PREFIX + "batch_size"
# Below this final training top-1 a network has not fit its training set: effects that only
# show late in training (overfitting, the benefit of regularization) cannot show yet.
UNDERFIT = 60.0
# A run whose final validation top-1 is within a point of chance (10%) learned nothing.
CHANCE = 11.0


@dataclass
class Runs:
    """The seeds of one configuration: trials, test scores, overfitting numbers."""

    name: str
    trials: pd.DataFrame
    test: pd.DataFrame
    over: pd.DataFrame

    @property
    def scored(self) -> bool:
        return len(self.test) == len(self.trials) and len(self.test) > 0

    def train_fit(self) -> Estimate:
        return estimate(self.trials["final_train_top1"])

    def failures(self) -> list[str]:
        diverged = int(self.trials["stop_reason"].eq("diverged").sum())
        alive = self.trials[self.trials["stop_reason"] != "diverged"]
        collapsed = int((alive["final_val_top1"].astype(float) <= CHANCE).sum())
        parts = [f"{diverged} diverged"] if diverged else []
        parts += [f"{collapsed} ended at chance (val top-1 <= {CHANCE:g}%)"] if collapsed else []
        return [f"{self.name}: {' and '.join(parts)} of {len(self.trials)} seeds"] if parts else []


def runs_of(study: StudyData, mask: pd.Series, name: str) -> Runs | None:
    trials = study.trials[mask].dropna(subset=["best_metric"])
    if trials.empty:
        return None
    ids = trials["trial_id"]
    has_test = "trial_id" in study.test
    test = study.test[study.test["trial_id"].isin(ids)] if has_test else pd.DataFrame()
    over = overfitting_table(study)
    return Runs(name, trials, test, over[over["trial_id"].isin(ids)])


def score(a: Runs, b: Runs) -> tuple[pd.Series, pd.Series, str]:
    """Test top-1 when both sides were scored on the test set, else best validation top-1."""
    if a.scored and b.scored:
        return a.test["test/top1"], b.test["test/top1"], "test top-1"
    return a.trials["best_metric"], b.trials["best_metric"], "best val top-1"


def compare(a: Runs, b: Runs, *, higher: bool) -> Check:
    x, y, label = score(a, b)
    return effect(f"{label} {a.name} − {b.name}:", difference(x, y), higher=higher, unit=" pt")


def underfits(*runs: Runs) -> list[str]:
    found = []
    for r in runs:
        fit = r.train_fit()
        if fit.mean < UNDERFIT:
            found.append(
                f"{r.name} underfits: final train top-1 "
                f"{fmt_estimate(r.trials['final_train_top1'])}%"
            )
    return found


def wide(checks: list[Check], *runs: Runs) -> list[str]:
    if any(c.spans for c in checks):
        seeds = " and ".join(f"{len(r.trials)} ({r.name})" for r in runs)
        return [f"an interval spans its threshold with {seeds} seeds"]
    return []


def overfit_check(r: Runs) -> Check:
    judged = r.over[r.over["judged"]]
    count, n = int(judged["overfitting"].sum()), len(judged)
    text = f"{r.name}: {count} of {n} judged seeds overfit"
    if n == 0:
        return Check(text + " (runs too short to judge)", Outcome.INCONCLUSIVE)
    if 2 * count > n:
        return Check(text + ": reproduces", Outcome.REPRODUCES)
    outcome = Outcome.INCONCLUSIVE if r.train_fit().mean < UNDERFIT else Outcome.FAILS
    return Check(f"{text}: {outcome.value}", outcome)


class Evidence:
    """The ablation, learning-rate x batch-size and search studies among those reported."""

    def __init__(self, studies: Sequence[StudyData]):
        self.ablation = next(
            (s for s in studies if "baseline" in set(s.trials.get("variant", []))), None
        )
        self.grid = next(
            (
                s
                for s in studies
                if LR in s.trials
                and BS in s.trials
                and s.trials[LR].nunique() > 2
                and s.trials[BS].nunique() > 1
            ),
            None,
        )
        self.any = next((s for s in studies if not s.epochs.empty), None)
        self.search = next(
            (s for s in studies if (s.spec.get("search") or {}).get("algorithm") == "optuna"), None
        )

    def variant(self, name: str) -> Runs | None:
        study = self.ablation
        if study is None:
            return None
        return runs_of(study, study.trials["variant"] == name, name)

    def cell(self, lr: float, bs: int) -> Runs | None:
        assert self.grid is not None
        t = self.grid.trials
        mask = (t[LR].astype(float) == lr) & (t[BS].astype(int) == bs)
        return runs_of(self.grid, mask, f"lr {lr:g}, bs {bs}")
