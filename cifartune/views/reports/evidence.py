"""The measured numbers the seed findings are judged by: the seeds of one configuration (test
scores, overfitting numbers, failures) and the claims that compare two of them.

Only studies that declare ``reproduces: practical-work`` are evidence, and accuracy claims are
judged on top-1 accuracy (test top-1, else the best val/top1 of any epoch), whatever metric a
study selected its checkpoints by: a loss is never read as an accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from cifartune.config.spec import PRACTICAL_WORK
from cifartune.store.columns import CONFIG_PREFIX
from cifartune.store.study_data import StudyData

from .naming import short
from .stats import Estimate, difference, estimate, fmt_estimate, overfitting_table
from .verdicts import Check, Outcome, effect

LR, BS = CONFIG_PREFIX + "optim.lr", CONFIG_PREFIX + "batch_size"
OPTIMIZER = CONFIG_PREFIX + "optim.name"
# The practical work's learning rates and batch sizes were run with plain SGD.
SEED_OPTIMIZER = "sgd"
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


def declares(study: StudyData) -> bool:
    """Whether the study's spec says it reproduces the practical work (spec.yaml's
    ``reproduces``): only such studies are judged against its findings."""
    return study.spec.get("reproduces") == PRACTICAL_WORK


def runs_of(study: StudyData, mask: pd.Series, name: str) -> Runs | None:
    # Best val top-1 of any epoch, from the epoch rows: the trial table's best_metric is the
    # study's selection metric, which may be a loss.
    top1 = pd.to_numeric(study.epochs["val/top1"], errors="coerce")
    best_top1 = top1.groupby(study.epochs["trial_id"]).max()
    trials = study.trials[mask]
    trials = trials.assign(best_val_top1=trials["trial_id"].map(best_top1))
    trials = trials.dropna(subset=["best_val_top1"])
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
    return a.trials["best_val_top1"], b.trials["best_val_top1"], "best val top-1"


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


def _is_grid(study: StudyData) -> bool:
    """A learning-rate x batch-size grid: both are grid axes (lists) of the spec, with at least
    3 learning rates and 2 batch sizes (a sampled learning rate has no cells to compare)."""
    space = study.spec.get("space") or {}
    lrs, sizes = space.get("optim.lr"), space.get("batch_size")
    return (
        isinstance(lrs, list)
        and isinstance(sizes, list)
        and LR in study.trials
        and BS in study.trials
        and study.trials[LR].nunique() > 2
        and study.trials[BS].nunique() > 1
    )


def held_values(study: StudyData) -> dict[str, str]:
    """The value every other searched factor of a grid is held at when learning rates and
    batch sizes are compared, so that a cell differs from another in those two alone (never,
    say, in its optimizer): SGD for the optimizer when the grid has it, else the factor's
    first value in the spec; the first variant."""
    space = study.spec.get("space") or {}
    held: dict[str, str] = {}
    for key in study.factor_keys:
        if key in (LR, BS):
            continue
        present = list(dict.fromkeys(study.trials[key].astype(str)))
        listed = space.get(key.removeprefix(CONFIG_PREFIX))
        order = [str(v) for v in listed] if isinstance(listed, list) else []
        if key == OPTIMIZER:
            order.insert(0, SEED_OPTIMIZER)
        held[key] = next((v for v in order if v in present), present[0])
    if study.has_variants():
        variants = set(study.trials["variant"].astype(str))
        held["variant"] = next(v for v in study.spec["variants"] if v in variants)
    return held


class Evidence:
    """The ablation, learning-rate x batch-size and search studies among the reported studies
    that declare they reproduce the practical work (the others are not evidence)."""

    def __init__(self, studies: Sequence[StudyData]):
        declared = [s for s in studies if declares(s)]
        self.ablation = next(
            (s for s in declared if "baseline" in set(s.trials.get("variant", []))), None
        )
        self.grid = next((s for s in declared if _is_grid(s)), None)
        self.held = held_values(self.grid) if self.grid is not None else {}
        self.any = next((s for s in declared if not s.epochs.empty), None)
        self.search = next(
            (s for s in declared if (s.spec.get("search") or {}).get("algorithm") == "optuna"),
            None,
        )

    def variant(self, name: str) -> Runs | None:
        study = self.ablation
        if study is None:
            return None
        return runs_of(study, study.trials["variant"] == name, name)

    def grid_trials(self) -> pd.DataFrame:
        """The grid's trials at the held values of its other factors."""
        assert self.grid is not None
        t = self.grid.trials
        mask = pd.Series(True, index=t.index)
        for key, value in self.held.items():
            mask &= t[key].astype(str) == value
        return t[mask]

    def held_text(self) -> str:
        """', optimizer sgd, dropout 0' for the setting column (empty when nothing is held)."""
        return "".join(f", {short(k)} {v}" for k, v in self.held.items())

    def cell(self, lr: float, bs: int) -> Runs | None:
        assert self.grid is not None
        t = self.grid_trials()
        mask = (t[LR].astype(float) == lr) & (t[BS].astype(int) == bs)
        chosen = self.grid.trials.index.isin(t.index[mask])
        return runs_of(
            self.grid, pd.Series(chosen, index=self.grid.trials.index), f"lr {lr:g}, bs {bs}"
        )
