"""The practical work's findings, checked against study results (the report's seed table).

Each finding is a rule over measured numbers. A row says what the seed reported, what the studies
measured (mean ± 95% CI over seeds, at the studies' fidelity), and whether the direction of the
finding reproduces. Rows whose studies were not run say so.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from .figures import _fmt, overfitting_table
from .results import CONFIG_PREFIX, StudyData

LR, BS = CONFIG_PREFIX + "optim.lr", CONFIG_PREFIX + "batch_size"


@dataclass(frozen=True)
class Verdict:
    ours: str
    reproduces: bool | None  # None: not measurable from these studies
    evidence: str


def _ci(values: pd.Series, digits: int = 1) -> str:
    from .report import fmt_ci

    return fmt_ci(values, digits)


def _mean(values: pd.Series) -> float:
    return float(pd.to_numeric(values, errors="coerce").mean())


class Evidence:
    """Per-variant and per-cell numbers from the ablation and learning-rate x batch-size studies."""

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

    def variant(self, name: str) -> dict[str, pd.Series] | None:
        study = self.ablation
        if study is None or name not in set(study.trials["variant"]):
            return None
        trials = study.trials[study.trials["variant"] == name].dropna(subset=["best_metric"])
        if trials.empty:
            return None
        ids = set(trials["trial_id"])
        over = overfitting_table(study)
        over = over[over["trial_id"].isin(ids)]
        test = (
            study.test[study.test["trial_id"].isin(ids)] if not study.test.empty else pd.DataFrame()
        )
        return {
            "test": test["test/top1"] if not test.empty else trials["best_metric"][:0],
            "test_loss": test["test/loss"] if not test.empty else trials["best_metric"][:0],
            "val": trials["best_metric"],
            "min_val_loss": over["min_val_loss"],
            "min_epoch": over["min_val_loss_epoch"],
            "rise": over["val_loss_rise"],
            "overfit": over["overfitting"],
            "diverged": trials["stop_reason"].eq("diverged"),
        }

    def score(self, v: dict[str, pd.Series]) -> pd.Series:
        """Test top-1 where scored, else the best validation top-1."""
        return v["test"] if len(v["test"]) else v["val"]

    def cell(self, lr: float, bs: int) -> pd.DataFrame:
        assert self.grid is not None
        trials = self.grid.trials
        return trials[(trials[LR].astype(float) == lr) & (trials[BS].astype(int) == bs)]


def _initial(e: Evidence) -> Verdict | None:
    if e.any is None or "init/loss" not in e.any.epochs:
        return None
    first = e.any.epochs[e.any.epochs["epoch"] == 1]
    loss, top1, top5 = first["init/loss"], first["init/top1"], first["init/top5"]
    ok = abs(_mean(loss) - 2.303) < 0.1 and 3 <= _mean(top1) <= 17 and 35 <= _mean(top5) <= 65
    return Verdict(
        f"loss {_ci(loss, 3)}, top-1 {_ci(top1)}%, top-5 {_ci(top5)}% ({len(first)} trials)",
        ok,
        "chance is ln 10 = 2.303, 10%, 50%",
    )


def _learning_rate(e: Evidence) -> Verdict | None:
    if e.grid is None:
        return None
    bs = 128 if 128 in set(e.grid.trials[BS].astype(int)) else int(e.grid.trials[BS].median())
    parts, best = [], {}
    for lr in sorted(e.grid.trials[LR].astype(float).unique(), reverse=True):
        cell = e.cell(lr, bs)
        best[lr] = _mean(cell["best_metric"])
        div = int(cell["stop_reason"].eq("diverged").sum())
        parts.append(
            f"lr {lr:g}: {_ci(cell['best_metric'])}%" + (f" ({div} diverged)" if div else "")
        )
    top = max(best, key=lambda k: best[k])
    high, low = max(best), min(best)
    ok = top not in (high, low) and best[high] < best[top] and best[low] < 20
    return Verdict(
        f"batch {bs}, best val top-1: " + "; ".join(parts),
        ok,
        f"best lr {top:g}; highest lr fails ({best[high]:.1f}%), lowest barely learns "
        f"({best[low]:.1f}%)",
    )


def _batch_size(e: Evidence) -> Verdict | None:
    if e.grid is None:
        return None
    lrs = set(e.grid.trials[LR].astype(float))
    lr = 0.1 if 0.1 in lrs else sorted(lrs)[len(lrs) // 2]
    sizes = sorted(e.grid.trials[BS].astype(int).unique())
    epochs = e.grid.epochs
    rows = []
    for bs in sizes:
        ids = set(e.cell(lr, bs)["trial_id"])
        curve = epochs[epochs["trial_id"].isin(ids)]
        noise = curve.groupby("trial_id")["val/top1"].apply(lambda s: s.diff().abs().mean())
        rows.append((bs, _mean(curve["time/epoch_s"]), _mean(noise)))
    small, large = rows[0], rows[-1]
    ok = small[1] > 1.5 * large[1] and small[2] > large[2]
    text = "; ".join(
        f"bs {b}: {t:.1f} s/epoch, mean epoch-to-epoch change of val top-1 {n:.1f}"
        for b, t, n in rows
    )
    return Verdict(
        f"lr {lr:g}: {text}",
        ok,
        f"bs {small[0]} is {small[1] / large[1]:.1f}x slower per epoch and "
        f"{'noisier' if small[2] > large[2] else 'not noisier'} than bs {large[0]}",
    )


def _variant_row(
    name: str, compare: str | None, rule: Callable[[Evidence, dict, dict | None], tuple[bool, str]]
) -> Callable[[Evidence], Verdict | None]:
    def check(e: Evidence) -> Verdict | None:
        v = e.variant(name)
        if v is None:
            return None
        other = e.variant(compare) if compare else None
        scored = "test" if len(v["test"]) else "best val"
        ours = (
            f"{scored} top-1 {_ci(e.score(v))}%, min val loss {_ci(v['min_val_loss'], 3)} "
            f"at epoch {_ci(v['min_epoch'])}, {int(v['overfit'].sum())}/{len(v['overfit'])} "
            "seeds overfit"
        )
        if int(v["diverged"].sum()):
            ours += f", {int(v['diverged'].sum())} diverged"
        if compare and other is None:
            return Verdict(ours, None, f"no finished {compare} trials to compare with")
        ok, evidence = rule(e, v, other)
        return Verdict(ours, ok, evidence)

    return check


def _higher(e: Evidence, v: dict, other: dict | None, what: str) -> tuple[bool, str]:
    if other is None:
        return False, f"no finished {what} trials to compare with"
    a, b = _mean(e.score(v)), _mean(e.score(other))
    return a > b, f"{a:.1f}% vs {b:.1f}% for {what}"


def _lower(e: Evidence, v: dict, other: dict | None, what: str) -> tuple[bool, str]:
    higher, text = _higher(e, v, other, what)
    return other is not None and not higher, text


FINDINGS: list[tuple[str, str, str, Callable[[Evidence], Verdict | None]]] = [
    ("initial state", "random init, first batch", "loss 2.30, top-1 ~8-10%, top-5 ~50%", _initial),
    (
        "learning rate",
        "lr 1 / 0.1 / 0.001 / 0.00001, bs 128",
        "1 unstable/diverges; 0.1 fine; 0.001 slow; 0.00001 barely learns",
        _learning_rate,
    ),
    (
        "batch size",
        "8 / 32 / 128 / 256, lr 0.1",
        "small batches noisy and much slower per epoch; large batches smoother",
        _batch_size,
    ),
    (
        "baseline",
        "SGD lr 0.1, bs 128, no normalization",
        "test accuracy plateaus near 70%; test loss U-shaped (overfitting), minimum near 1.0",
        _variant_row(
            "baseline",
            None,
            lambda e, v, o: (
                bool(v["overfit"].mean() >= 0.5),
                "U-shaped validation loss in most seeds"
                if v["overfit"].mean() >= 0.5
                else "validation loss did not turn up",
            ),
        ),
    ),
    (
        "+ standardization",
        "per-channel mean/std from train",
        "slightly above 70%, lower minimum test loss, still overfits",
        _variant_row(
            "standardize",
            "baseline",
            lambda e, v, o: (
                o is not None
                and _mean(e.score(v)) >= _mean(e.score(o))
                and _mean(v["min_val_loss"]) <= _mean(o["min_val_loss"]),
                _higher(e, v, o, "baseline")[1]
                + (
                    f"; min val loss {_mean(v['min_val_loss']):.3f} vs "
                    f"{_mean(o['min_val_loss']):.3f}"
                    if o
                    else ""
                ),
            ),
        ),
    ),
    (
        "ZCA instead",
        "ZCA whitening",
        "worse, unstable",
        _variant_row(
            "zca",
            "standardize",
            lambda e, v, o: _lower(e, v, o, "standardize"),
        ),
    ),
    (
        "+ augmentation",
        "random crop + horizontal flip",
        "close to 80%, test loss keeps falling longer",
        _variant_row(
            "augment",
            "standardize",
            lambda e, v, o: (
                _higher(e, v, o, "standardize")[0]
                and o is not None
                and _mean(v["min_epoch"]) > _mean(o["min_epoch"]),
                _higher(e, v, o, "standardize")[1]
                + (
                    f"; val loss minimum at epoch "
                    f"{_mean(v['min_epoch']):.1f} vs {_mean(o['min_epoch']):.1f}"
                    if o
                    else ""
                ),
            ),
        ),
    ),
    (
        "+ optimizer",
        "SGD momentum + exponential LR decay (gamma 0.95)",
        "higher and steadier",
        _variant_row("momentum", "augment", lambda e, v, o: _higher(e, v, o, "augment")),
    ),
    (
        "Adam",
        "lr 0.01",
        "poor",
        _variant_row(
            "adam",
            "augment",
            lambda e, v, o: _lower(e, v, o, "SGD (augment)"),
        ),
    ),
    (
        "+ dropout",
        "before the fully-connected layers",
        "overfitting gone, better",
        _variant_row(
            "dropout",
            "momentum",
            lambda e, v, o: (
                o is not None
                and _mean(v["rise"]) < _mean(o["rise"])
                and _higher(e, v, o, "momentum")[0],
                _higher(e, v, o, "momentum")[1]
                + (
                    f"; val loss rise after its minimum "
                    f"{_mean(v['rise']):.0%} vs {_mean(o['rise']):.0%}"
                    if o
                    else ""
                ),
            ),
        ),
    ),
    (
        "+ batch norm",
        "after the convolutions",
        "best: above 80% test accuracy, test loss ~0.6",
        _variant_row("batchnorm", None, lambda e, v, o: _best_of_all(e, v)),
    ),
]


def _best_of_all(e: Evidence, v: dict) -> tuple[bool, str]:
    assert e.ablation is not None
    means = {
        name: _mean(e.score(e.variant(name) or {}))
        for name in e.ablation.trials["variant"].unique()
    }
    winner = max(means, key=lambda k: means[k])
    return winner == "batchnorm", f"best variant: {winner} ({means[winner]:.1f}%)"


def _fidelity_of(study: StudyData) -> tuple[object, object]:
    base = study.spec.get("base", {}) or {}
    return (base.get("data", {}) or {}).get("train_subset"), base.get("epochs")


def _search_beats_seed(e: Evidence) -> Verdict | None:
    """The search's best configuration, scored on test, against the seed's best recipe
    (the ablation's last variant) at the same data fidelity."""
    if e.search is None or e.search.test.empty:
        return None
    best = e.search.test[e.search.test["rank"] == 1]
    trial = e.search.trials.set_index("trial_id").loc[best["trial_id"].iloc[0]]
    keys = [k for k in trial.index if k.startswith(CONFIG_PREFIX)]
    recipe = {
        k.removeprefix(CONFIG_PREFIX): trial[k]
        for k in keys
        if k.removeprefix(CONFIG_PREFIX) in (e.search.spec.get("space") or {})
    }
    ours = f"test top-1 {_ci(best['test/top1'])}% with " + ", ".join(
        f"{k}={_fmt(v)}" for k, v in recipe.items()
    )
    seed_best = e.variant("batchnorm")
    if seed_best is None or not len(seed_best["test"]):
        return Verdict(ours, None, "no scored seed recipe (ablation batchnorm variant) to compare")
    same = e.ablation is not None and _fidelity_of(e.ablation) == _fidelity_of(e.search)
    a, b = _mean(best["test/top1"]), _mean(seed_best["test"])
    return Verdict(
        ours,
        a > b and same,
        f"{a:.1f}% vs {b:.1f}% for the seed's best recipe"
        + ("" if same else " (at a different fidelity: not comparable)"),
    )


FINDINGS.append(
    (
        "search",
        "Optuna TPE + ASHA over the same network",
        "goal: beat the seed's best (>= 85% test top-1 at full fidelity; at CPU fidelity, beat the "
        "seed's best recipe run at the same fidelity)",
        _search_beats_seed,
    )
)


def seed_table(studies: Sequence[StudyData]) -> pd.DataFrame:
    evidence = Evidence(studies)
    rows = []
    for step, setting, reported, check in FINDINGS:
        verdict = check(evidence)
        if verdict is None:
            rows.append(
                {
                    "step": step,
                    "setting": setting,
                    "reported (seed)": reported,
                    "ours": "not in these studies",
                    "reproduces": "–",
                    "evidence": "",
                }
            )
            continue
        mark = {
            True: "<span class='ok'>yes</span>",
            False: "<span class='no'>no</span>",
            None: "–",
        }[verdict.reproduces]
        rows.append(
            {
                "step": step,
                "setting": setting,
                "reported (seed)": reported,
                "ours": html.escape(verdict.ours),
                "reproduces": mark,
                "evidence": html.escape(verdict.evidence),
            }
        )
    return pd.DataFrame(rows)


def fidelity(studies: Sequence[StudyData]) -> str:
    parts = []
    for study in studies:
        base = study.spec.get("base", {}) or {}
        data = base.get("data", {}) or {}
        parts.append(
            f"{study.name}: {data.get('train_subset') or 45000} training images, "
            f"{data.get('val_size') or 5000} validation, {base.get('epochs')} epochs, "
            f"{study.spec.get('repeats', 1)} seed(s) per configuration"
        )
    return "; ".join(parts)


def seed_section(studies: Sequence[StudyData]):  # type: ignore[no-untyped-def]
    """The report section comparing with the practical work, when these are seed studies."""
    from .report import Section

    evidence = Evidence(studies)
    if evidence.ablation is None and evidence.grid is None:
        return None  # not a seed study: a search alone has nothing to compare with
    section = Section("Seed reproduction")
    section.paragraphs.append(
        "The practical work's findings (50 epochs on the full training set unless said) against "
        f"these studies. Fidelity: {html.escape(fidelity(studies))}. 'reproduces' judges the "
        "direction of each finding from the measured numbers in 'evidence'."
    )
    section.tables.append(("Seed findings", seed_table(studies)))
    return section
