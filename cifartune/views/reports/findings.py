"""The practical work's findings checked against study results (the report's seed table).

Each finding is a list of claims over measured numbers (see :mod:`.verdicts` for the rule), at the
fidelity of the studies that measured it; where it does not reproduce, the row carries the
measured reasons (underfitting, diverged or collapsed seeds, the evaluation pass's share of an
epoch, intervals too wide for the number of seeds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from cifartune.store.study_data import StudyData

from .document import Html, Section, Table, tag
from .evidence import (
    BS,
    LR,
    UNDERFIT,
    Evidence,
    Runs,
    compare,
    declares,
    overfit_check,
    score,
    underfits,
    wide,
)
from .naming import fidelity, fmt, short
from .stats import difference, estimate, fmt_estimate
from .verdicts import RULE, Check, Finding, Outcome, effect, within


def _initial(e: Evidence) -> Finding | None:
    if e.any is None or "init/loss" not in e.any.epochs:
        return None
    first = e.any.epochs[e.any.epochs["epoch"] == 1]
    row = Finding(
        "initial state",
        "random init, first batch",
        "loss 2.30, top-1 ~8-10%, top-5 ~50%",
        f"{e.any.name}: {len(first)} trials",
    )
    # Chance is ln 10 = 2.303, 10% and 50%; the bands allow an untrained net's small bias.
    row.checks += [
        within("loss", estimate(first["init/loss"]), 2.2, 2.4, 3),
        within("top-1 %", estimate(first["init/top1"]), 3, 17),
        within("top-5 %", estimate(first["init/top5"]), 35, 65),
    ]
    return row


def _learning_rate(e: Evidence) -> Finding | None:
    if e.grid is None:
        return None
    grid = e.grid_trials()
    sizes = set(grid[BS].astype(int))
    bs = 128 if 128 in sizes else sorted(sizes)[len(sizes) // 2]
    cells = {lr: e.cell(lr, bs) for lr in sorted(set(grid[LR].astype(float)))}
    runs = {lr: r for lr, r in cells.items() if r is not None}
    if len(runs) < 3:
        return None
    low, mid, high = min(runs), sorted(runs)[-2], max(runs)
    row = Finding(
        "learning rate",
        f"lr {' / '.join(f'{lr:g}' for lr in sorted(runs, reverse=True))}, bs {bs}" + e.held_text(),
        "1 unstable/diverges; 0.1 fine; 0.001 slow; 0.00001 barely learns",
        fidelity(e.grid),
    )
    row.checks.append(compare(runs[mid], runs[high], higher=True))
    if len(runs) > 3:
        row.checks.append(compare(runs[mid], runs[sorted(runs)[1]], higher=True))
    lowest = estimate(runs[low].trials["best_val_top1"])
    row.checks.append(within(f"best val top-1 % at lr {low:g}", lowest, 0, 20))
    diverged = grid[grid[LR].astype(float) == high]["stop_reason"]
    row.notes.append(
        f"lr {high:g}: {int(diverged.eq('diverged').sum())} of {len(diverged)} runs "
        "diverged over all batch sizes"
    )
    row.reasons += underfits(runs[mid]) + wide(row.checks, runs[mid], runs[high])
    return row


def _batch_size(e: Evidence) -> Finding | None:
    if e.grid is None:
        return None
    grid = e.grid_trials()
    lrs = sorted(set(grid[LR].astype(float)))
    lr = 0.1 if 0.1 in lrs else lrs[len(lrs) // 2]
    sizes = sorted(set(grid[BS].astype(int)))
    small, large = e.cell(lr, sizes[0]), e.cell(lr, sizes[-1])
    if small is None or large is None:
        return None
    epochs = e.grid.epochs.groupby("trial_id")

    def per_trial(r: Runs, column: str) -> pd.Series:
        return epochs[column].mean().reindex(r.trials["trial_id"])

    def noise(r: Runs) -> pd.Series:
        change = epochs["val/top1"].apply(lambda s: s.diff().abs().mean())
        return change.reindex(r.trials["trial_id"])

    row = Finding(
        "batch size",
        f"{' / '.join(map(str, sizes))}, lr {lr:g}" + e.held_text(),
        "small batches noisy and much slower per epoch; large batches smoother",
        fidelity(e.grid),
    )
    ratio = 1.5  # "much slower": at least 1.5x the seconds per epoch
    epoch_s = (per_trial(small, "time/epoch_s"), per_trial(large, "time/epoch_s"))
    row.checks += [
        effect(
            f"s/epoch bs {sizes[0]} − {ratio:g} × bs {sizes[-1]}:",
            difference(*epoch_s, scale=ratio),
            higher=True,
            digits=2,
            unit=" s",
        ),
        effect(
            f"mean epoch-to-epoch change of val top-1, bs {sizes[0]} − bs {sizes[-1]}:",
            difference(noise(small), noise(large)),
            higher=True,
            unit=" pt",
        ),
    ]
    train_s = (per_trial(small, "time/train_s"), per_trial(large, "time/train_s"))
    row.notes.append(
        f"s/epoch {estimate(epoch_s[0]).mean:.2f} vs {estimate(epoch_s[1]).mean:.2f} "
        f"({estimate(epoch_s[0]).mean / estimate(epoch_s[1]).mean:.2f}x)"
    )
    if row.checks[0].outcome is not Outcome.REPRODUCES:
        eval_s = estimate(epoch_s[1] - train_s[1]).mean
        row.reasons.append(
            f"training alone is {estimate(train_s[0]).mean / estimate(train_s[1]).mean:.2f}x "
            f"slower ({estimate(train_s[0]).mean:.2f} vs {estimate(train_s[1]).mean:.2f} s); the "
            f"evaluation pass adds {eval_s:.2f} s to every epoch whatever the batch size"
        )
    row.reasons += wide(row.checks[1:], small, large)
    return row


def _variant(
    step: str,
    setting: str,
    reported: str,
    name: str,
    against: str | None,
    claims: Callable[[Runs, Runs | None], list[Check]],
) -> Callable[[Evidence], Finding | None]:
    def check(e: Evidence) -> Finding | None:
        runs, other = e.variant(name), e.variant(against) if against else None
        if runs is None or (against and other is None):
            return None
        assert e.ablation is not None
        row = Finding(step, setting, reported, fidelity(e.ablation))
        row.checks = claims(runs, other)
        pair = [r for r in (runs, other) if r is not None]
        row.notes.append(
            "; ".join(
                f"{r.name}: {score(r, r)[2]} {fmt_estimate(score(r, r)[0])}, min val loss "
                f"{fmt_estimate(r.over['min_val_loss'], 3)}"
                for r in pair
            )
        )
        row.reasons += underfits(*pair)
        for r in pair:
            row.reasons += r.failures()
        row.reasons += wide(row.checks, *pair)
        return row

    return check


def _min_loss(a: Runs, b: Runs) -> Check:
    return effect(
        f"min val loss {a.name} − {b.name}:",
        difference(a.over["min_val_loss"], b.over["min_val_loss"]),
        higher=False,
        digits=3,
    )


def _later_minimum(a: Runs, b: Runs) -> Check:
    return effect(
        f"epoch of min val loss {a.name} − {b.name}:",
        difference(a.over["min_epoch"], b.over["min_epoch"]),
        higher=True,
    )


def _overfits_less(a: Runs, b: Runs) -> Check:
    return effect(
        f"late val loss rise over its minimum {a.name} − {b.name}:",
        difference(a.over["rise"], b.over["rise"]),
        higher=False,
        digits=2,
    )


def _best_variant(e: Evidence) -> Finding | None:
    best = e.variant("batchnorm")
    if best is None or e.ablation is None:
        return None
    names = [v for v in e.ablation.spec.get("variants", {}) if v != "batchnorm"]
    others = [r for r in map(e.variant, names) if r is not None]
    if not others:
        return None
    runner_up = max(others, key=lambda r: estimate(score(r, best)[0]).mean)
    row = Finding(
        "+ batch norm",
        "after the convolutions",
        "best: above 80% test accuracy, test loss ~0.6",
        fidelity(e.ablation),
    )
    row.checks.append(compare(best, runner_up, higher=True))
    row.notes.append(
        f"best variant; absolute level {fmt_estimate(score(best, best)[0])}% is not comparable "
        "with the practical work's at this fidelity"
    )
    row.reasons += wide(row.checks, best, runner_up)
    return row


def _search(e: Evidence) -> Finding | None:
    """The search's best configuration, scored on test, against the seed's best recipe (the
    ablation's batchnorm variant) at the same fidelity."""
    if e.search is None or "rank" not in e.search.test:
        return None
    best = e.search.test[e.search.test["rank"] == 1]
    seed_best = e.variant("batchnorm")
    if best.empty or seed_best is None or not seed_best.scored or e.ablation is None:
        return None
    trial = e.search.trials.set_index("trial_id").loc[best["trial_id"].iloc[0]]
    recipe = ", ".join(f"{short(k)} {fmt(trial[k])}" for k in e.search.factor_keys)
    row = Finding(
        "search",
        "Optuna TPE + ASHA over the same network",
        "goal: beat the seed's best recipe (>= 85% test top-1 at full fidelity)",
        fidelity(e.search),
    )
    same = fidelity(e.ablation).split(",")[:2] == fidelity(e.search).split(",")[:2]
    diff = difference(best["test/top1"], seed_best.test["test/top1"])
    if same:
        what = "test top-1 search best − seed's best recipe:"
        row.checks.append(effect(what, diff, higher=True, unit=" pt"))
    else:
        text = "the seed's recipe ran at another fidelity: not comparable"
        row.checks.append(Check(text, Outcome.INCONCLUSIVE))
    row.notes.append(f"best configuration: {recipe}")
    if len(best) == 1:
        row.notes.append("the search's best was scored once; the interval is the recipe's seeds'")
    return row


FINDINGS: list[Callable[[Evidence], Finding | None]] = [
    _initial,
    _learning_rate,
    _batch_size,
    _variant(
        "baseline",
        "SGD lr 0.1, bs 128, no normalization",
        "test accuracy plateaus near 70%; test loss U-shaped (overfitting), minimum near 1.0",
        "baseline",
        None,
        lambda v, o: [overfit_check(v)],
    ),
    _variant(
        "+ standardization",
        "per-channel mean/std from train",
        "slightly above 70%, lower minimum test loss, still overfits",
        "standardize",
        "baseline",
        lambda v, o: [compare(v, o, higher=True), _min_loss(v, o), overfit_check(v)]
        if o
        else [],
    ),
    _variant(
        "ZCA instead", "ZCA whitening", "worse, unstable", "zca", "standardize",
        lambda v, o: [compare(v, o, higher=False)] if o else [],
    ),
    _variant(
        "+ augmentation",
        "random crop + horizontal flip",
        "close to 80%, test loss keeps falling longer",
        "augment",
        "standardize",
        lambda v, o: [compare(v, o, higher=True), _later_minimum(v, o)] if o else [],
    ),
    _variant(
        "+ optimizer",
        "SGD momentum + exponential LR decay (gamma 0.95)",
        "higher and steadier",
        "momentum",
        "augment",
        lambda v, o: [compare(v, o, higher=True)] if o else [],
    ),
    _variant(
        "Adam", "lr 0.01 instead of SGD", "poor", "adam", "augment",
        lambda v, o: [compare(v, o, higher=False)] if o else [],
    ),
    _variant(
        "+ dropout",
        "before the fully-connected layers",
        "overfitting gone, better",
        "dropout",
        "momentum",
        lambda v, o: [compare(v, o, higher=True), _overfits_less(v, o)] if o else [],
    ),
    _best_variant,
    _search,
]  # fmt: skip
VERDICT_CSS = {Outcome.REPRODUCES: "ok", Outcome.FAILS: "no", Outcome.INCONCLUSIVE: "unsure"}


def _lines(items: list[str]) -> Html:
    return Html("<br>".join(str(tag("span", i)) for i in items))


def seed_table(studies: Sequence[StudyData]) -> tuple[pd.DataFrame, list[str]]:
    """The findings measured by these studies, and the steps they cannot measure."""
    evidence = Evidence(studies)
    rows, missing = [], []
    names = ["initial state", "learning rate", "batch size", "baseline", "+ standardization",
             "ZCA instead", "+ augmentation", "+ optimizer", "Adam", "+ dropout", "+ batch norm",
             "search"]  # fmt: skip
    for name, check in zip(names, FINDINGS, strict=True):
        finding = check(evidence)
        if finding is None:
            missing.append(name)
            continue
        outcome = finding.outcome
        reasons = finding.reasons if outcome is not Outcome.REPRODUCES else []
        rows.append(
            {
                "finding": finding.step,
                "setting": finding.setting,
                "reported (practical work)": finding.reported,
                "fidelity": finding.fidelity,
                "measured": _lines([c.text for c in finding.checks] + finding.notes),
                "verdict": tag("span", outcome.value, VERDICT_CSS[outcome]),
                "why (measured)": _lines(reasons) if reasons else "",
            }
        )
    # object dtype keeps the Html cells Html (a string column would make them plain text)
    return pd.DataFrame(rows, dtype=object), missing


def seed_section(studies: Sequence[StudyData]) -> Section | None:
    """The section comparing with the practical work: only when a study declares it reproduces
    it (``reproduces: practical-work``), and judging those studies alone."""
    declared = [s for s in studies if declares(s)]
    if not declared:
        return None
    table, missing = seed_table(studies)  # Evidence keeps the declared ones
    section = Section("Seed reproduction")
    others = [s.name for s in studies if not declares(s)]
    section.paragraphs.append(
        "The practical work's findings (45,000 training images and 50 epochs) against the "
        f"studies that declare they reproduce it ({', '.join(s.name for s in declared)}), at "
        "the fidelity each row names"
        + (
            f"; {', '.join(others)} {'is' if len(others) == 1 else 'are'} not judged"
            if others
            else ""
        )
        + ". Accuracy claims are judged on top-1 accuracy whatever metric a study selected by: "
        "test top-1 where both compared configurations were scored on the test set, else the "
        "best validation top-1 of any epoch; 'pt' are percentage points."
    )
    section.paragraphs.append(RULE)
    section.paragraphs.append(
        f"A configuration underfits when its mean final train top-1 is below {UNDERFIT:g}%: "
        "effects that show late in training (overfitting, the gain from augmentation or dropout) "
        "cannot show yet, so an overfitting claim on it is inconclusive rather than refuted."
    )
    if missing:
        section.paragraphs.append("Not measured by these studies: " + ", ".join(missing) + ".")
    if not table.empty:
        section.tables.append(Table("Seed findings", table))
    return section
