"""The report's tables, as frames of text cells with readable column names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cifartune.store.columns import EFFECTIVE_PREFIX
from cifartune.store.study_data import StudyData

from .naming import (
    STOP_NAMES,
    compute_seconds,
    config_label,
    fidelity,
    fmt,
    metric_digits,
    short,
    trial_labels,
)
from .stats import fmt_estimate, overfitting_table


def _compute(trials: pd.DataFrame) -> str:
    seconds, what = compute_seconds(trials)
    kind, how = what.split()
    text = f"{seconds.sum() / 3600:.2f} {kind}-hours {how}"
    if how == "used" and "reserved_cpu_s" in trials:
        text += f" ({trials['reserved_cpu_s'].sum() / 3600:.2f} reserved)"
    return text


def _counts(trials: pd.DataFrame) -> str:
    if trials.empty:
        return "none yet"
    counts = trials["stop_reason"].map(lambda r: STOP_NAMES.get(r, r)).value_counts()
    return f"{len(trials)}: " + ", ".join(f"{n} {k}" for k, n in counts.items())


def _search_text(spec: dict) -> str:
    search = spec.get("search") or {}
    algorithm = search.get("algorithm", "grid")
    text = {"optuna": "Optuna TPE", "random": "random search"}.get(algorithm, "grid search")
    if algorithm != "grid":
        text += f" ({search.get('samples', '?')} samples)"
    sched = spec.get("scheduler") or {}
    if sched.get("name") == "asha":
        text += (
            f", ASHA (grace period {sched.get('grace_period')} epochs, reduction factor "
            f"{fmt(sched.get('reduction_factor'))})"
        )
    return text


def state_text(meta: dict) -> str:
    """The study's state from study.json: a failed study's with its most common error, one its
    budget ended with the limit it reached."""
    state = str(meta.get("state", "unknown"))
    if state == "failed" and meta.get("error"):
        return f"{state}: {meta['error']}"
    if meta.get("stop_reason"):
        return f"{state}, stopped by its budget: {meta['stop_reason']}"
    return state


def _data_text(data: dict) -> str:
    """Where the trials read CIFAR-10 from, as far as the spec says (without data.dir, the
    driver's $CIFARTUNE_DATA or cache, which the spec does not record)."""
    if data.get("source") == "bundled":
        return "bundled slice"
    return str(data.get("dir") or "CIFAR-10 from $CIFARTUNE_DATA or the cache")


def overview(study: StudyData) -> pd.DataFrame:
    meta, trials, spec = study.meta, study.trials, study.spec
    hardware = meta.get("hardware") or {}
    resources = spec.get("resources") or {}
    base = spec.get("base") or {}
    data = base.get("data") or {}
    rows = {
        "state": state_text(meta),
        "started / finished": f"{meta.get('started', '?')} / {meta.get('finished') or '–'}",
        "search": _search_text(spec),
        "selection metric": f"{study.metric} ({'higher' if study.mode == 'max' else 'lower'} "
        "is better)",
        "fidelity": fidelity(study),
        "data": f"{_data_text(data)}; validation {data.get('val_size') or '10%'} images",
        "trials": _counts(trials),
        "compute": _compute(trials) if not trials.empty else "–",
        "what ran": effective_text(trials),
        "resources per trial": f"{fmt(resources.get('cpus', 1))} CPU, "
        f"{fmt(resources.get('gpus', 0))} GPU",
        "spec hash": meta.get("spec_hash", "?"),
        "versions": ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items()),
        "hardware": f"{hardware.get('host', '?')}: {hardware.get('cpus', '?')} CPUs; GPUs: "
        f"{', '.join(hardware.get('gpus') or []) or 'none'}",
    }
    return pd.DataFrame({"property": list(rows), "value": list(rows.values())})


def effective_text(trials: pd.DataFrame) -> str:
    """What the trials really ran with (``effective/*``: precision ``auto`` picked, threads,
    device...), each setting's distinct values across trials."""
    columns = [c for c in trials.columns if c.startswith(EFFECTIVE_PREFIX)]
    if not columns:
        return "not recorded (results of an older cifartune)"
    parts = []
    for column in columns:
        values = sorted({str(v) for v in trials[column].dropna()}) or ["–"]
        parts.append(f"{column.removeprefix(EFFECTIVE_PREFIX)} {' / '.join(values)}")
    return "; ".join(parts)


def _test_of(study: StudyData, ids: pd.Series) -> pd.DataFrame:
    if study.test.empty or "trial_id" not in study.test:
        return pd.DataFrame()
    return study.test[study.test["trial_id"].isin(ids)]


def best_configurations(study: StudyData, n: int = 5) -> pd.DataFrame:
    """Configurations (seeds grouped) ranked by mean best validation metric, with test scores:
    the `n` best, ranked in columns first (a random search has a configuration per trial)."""
    scored = study.trials.dropna(subset=["best_metric"])
    if scored.empty:
        return pd.DataFrame()
    means = scored.groupby("group")["best_metric"].mean()
    best = means.sort_values(ascending=study.mode == "min", kind="stable").head(n).index
    rows = []
    for group in best:
        members = scored[scored["group"] == group]
        first = members.iloc[0]
        test = _test_of(study, members["trial_id"])
        row = {"variant": first["variant"]} if study.has_variants() else {}
        row.update({short(k): fmt(first[k]) for k in study.factor_keys})
        row.update(
            {
                "seeds": len(members),
                f"best {study.metric}": fmt_estimate(
                    members["best_metric"], metric_digits(study.metric, 2)
                ),
                "best epoch": ", ".join(str(int(e)) for e in members["best_epoch"].dropna()),
                "test top-1": fmt_estimate(test["test/top1"], 2) if len(test) else "not scored",
                "stopped": ", ".join(sorted({STOP_NAMES.get(r, r) for r in members.stop_reason})),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def variant_summary(study: StudyData) -> pd.DataFrame:
    """Per variant, over seeds: best validation metric, minimum validation loss, test scores."""
    if not study.has_variants() or study.trials.empty:
        return pd.DataFrame()
    over = overfitting_table(study).set_index("trial_id")
    order = [v for v in study.spec["variants"] if v in set(study.trials["variant"])]
    rows = []
    for variant in order:
        members = study.trials[study.trials["variant"] == variant]
        ids = members["trial_id"]
        test = _test_of(study, ids)
        fit = over.reindex(ids)
        rows.append(
            {
                "variant": variant,
                "seeds": len(members),
                f"best {study.metric}": fmt_estimate(
                    members["best_metric"], metric_digits(study.metric)
                ),
                "final train top-1": fmt_estimate(members["final_train_top1"]),
                "min val loss": fmt_estimate(fit["min_val_loss"], 3),
                "overfitting seeds": f"{int(fit['overfitting'].fillna(False).sum())} of "
                f"{int(fit['judged'].fillna(False).sum())} judged",
                "test top-1": fmt_estimate(test["test/top1"]) if len(test) else "not scored",
                "test loss": fmt_estimate(test["test/loss"], 3) if len(test) else "–",
                "stopped": ", ".join(
                    f"{n} {STOP_NAMES.get(k, k)}"
                    for k, n in members["stop_reason"].value_counts().items()
                ),
            }
        )
    return pd.DataFrame(rows)


def all_trials(study: StudyData) -> pd.DataFrame:
    """Every trial, one row: configuration, seed, budget, stop reason and its numbers."""
    trials = study.trials
    if trials.empty:
        return pd.DataFrame()
    test = study.test.set_index("trial_id") if "trial_id" in study.test else pd.DataFrame()
    frame = pd.DataFrame({"trial": trials["trial_id"]})
    if study.has_variants():
        frame["variant"] = trials["variant"]
    for key in study.factor_keys:
        frame[short(key)] = trials[key].map(fmt)
    if trials["seed"].nunique() > 1:
        frame["seed"] = trials["seed"]
    frame["epochs run"] = trials["epochs_run"]
    frame["stopped"] = trials["stop_reason"].map(lambda r: STOP_NAMES.get(r, r))
    digits = metric_digits(study.metric, 2)
    frame[f"best {study.metric}"] = _nums(trials["best_metric"], digits)
    frame["best epoch"] = _nums(trials["best_epoch"], 0)
    frame["final train top-1"] = _nums(trials["final_train_top1"], 1)
    if not test.empty and "test/top1" in test:
        frame["test top-1"] = _nums(trials["trial_id"].map(test["test/top1"]), 2)
    seconds, what = compute_seconds(trials)
    frame[f"{what.replace(' ', '-min ')}"] = _nums(seconds / 60, 1)
    if "error" in trials and trials["error"].notna().any():
        frame["error"] = trials["error"].map(_first_line)
    # Best first in the study's direction; trials without a value last.
    order = pd.to_numeric(trials["best_metric"], errors="coerce")
    order = order if study.mode == "min" else -order
    return frame.iloc[np.argsort(order.to_numpy(dtype=float), kind="stable")]


def _first_line(error: object, width: int = 160) -> str:
    """An error's first line (a traceback's last would do too, but the recorder keeps the
    message first), cut to fit a table cell."""
    if not isinstance(error, str) or not error:
        return ""
    line = error.strip().splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _nums(values: pd.Series, digits: int) -> pd.Series:
    """Numbers as text with `digits` decimals; '–' where there is none."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    return numbers.map(lambda v: "–" if np.isnan(v) else f"{v:.{digits}f}")


def overfitting_rows(study: StudyData, others: int = 8) -> pd.DataFrame:
    """The deciding numbers of the overfitting flag: every flagged trial, then the `others`
    unflagged ones whose validation loss rose most."""
    table = overfitting_table(study)
    table = table[table["judged"]]
    if table.empty:
        return pd.DataFrame()
    labels = trial_labels(study)
    table = table.sort_values(["overfitting", "rise"], ascending=False)
    table = table.head(int(table["overfitting"].sum()) + others)
    return pd.DataFrame(
        {
            "trial": table["trial_id"].map(labels),
            "overfits": table["overfitting"].map({True: "yes", False: "no"}),
            "epoch of min val loss": table["min_epoch"],
            "epochs run": table["epochs"],
            "min val loss": table["min_val_loss"].map(lambda v: f"{v:.3f}"),
            "lowest val loss in the last epochs": [
                f"{v:.3f} (last {t})"
                for v, t in zip(table["tail_low_val_loss"], table["tail"], strict=True)
            ],
            "rise over the min": table["rise"].map(lambda v: f"{v:+.0%}"),
            "train top-1 at min → last": [
                f"{a:.1f} → {b:.1f}"
                for a, b in zip(table["train_top1_at_min"], table["train_top1_final"], strict=True)
            ],
        }
    )


def asha_rung_table(study: StudyData, rungs: list[int]) -> pd.DataFrame:
    """Trials that reached each ASHA rung and the budget ASHA saved."""
    top = int(pd.to_numeric(study.trials["max_epochs"]).max())
    reached = [int((study.trials["epochs_run"] >= r).sum()) for r in [*rungs, top]]
    return pd.DataFrame(
        {
            "rung (epoch)": [*rungs, top],
            "trials reaching it": reached,
            "what": [*["ASHA rung"] * len(rungs), "end of training"],
        }
    )


def _best_label(study: StudyData, members: pd.DataFrame) -> str:
    """The best configuration's name; a PBT member's is its schedule, not its first values."""
    if members.empty:
        return "–"
    if study.pbt:
        return f"the schedule of trial {members['trial_id'].iloc[0]} (population-based training)"
    return config_label(members.iloc[0], study)


def studies_side_by_side(studies: Sequence[StudyData]) -> pd.DataFrame:
    # Studies selected by different metrics share one column of "their best value", with the
    # metric beside it, rather than a column per metric that is blank for the others.
    one_metric = len({s.metric for s in studies}) == 1
    rows = []
    for study in studies:
        trials = study.trials.dropna(subset=["best_metric"])
        means = trials.groupby("group")["best_metric"].mean()
        group = (means.idxmax() if study.mode == "max" else means.idxmin()) if len(means) else None
        members = trials[trials["group"] == group]
        rank_one = study.test[study.test["rank"] == 1] if "rank" in study.test else pd.DataFrame()
        best = fmt_estimate(members["best_metric"], metric_digits(study.metric))
        row = {
            "study": study.name,
            "state": state_text(study.meta),
            "fidelity": fidelity(study),
            "trials": _counts(study.trials),
            "best configuration": _best_label(study, members),
        }
        if one_metric:
            row[f"its best {study.metric}"] = best
        else:
            row.update({"selection metric": study.metric, "its best value": best})
        row.update(
            {
                "its test top-1": fmt_estimate(rank_one["test/top1"]) if len(rank_one) else "–",
                "compute": _compute(study.trials) if not study.trials.empty else "–",
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)
