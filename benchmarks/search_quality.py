"""Search quality under ASHA: Ray's ``OptunaSearch`` ("old") against ``EpochOptunaSearch`` ("new").

    python -m benchmarks.search_quality [--seeds 30] [--workers 4] [--trials 150] [--json OUT]
    python -m benchmarks.search_quality --smoke      # 2 seeds, few trials: seconds

No Ray runtime: a small event simulation drives the real searcher classes the way Ray's
TuneController does (``suggest``; per result ``on_trial_result`` unless the scheduler stops the
trial, in which case only ``on_trial_complete`` with that result), with W workers, an ASHA rung
rule as Ray's ``ASHAScheduler`` applies it (time attribute ``epoch``, as cifartune sets it) and
synthetic learning curves over (lr, width) whose optimum is known. In some trials Ray's
``training_iteration`` restarts at 1 mid-trial while ``epoch`` goes on (a resume from
cifartune's checkpoint). Both searchers get the same seed, the same curves and the same noise
(trial k of a run draws its noise from (seed, k)), so the runs are paired.

Reported: the simple regret of the configuration cifartune would pick (the trial with the best
epoch value so far) after 25%, 50% and 100% of the epoch budget, regret being the true final
quality (noise-free, at the last epoch) of the best configuration of the space minus that of the
pick; and how many per-epoch values each searcher's study holds at their own epoch.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from cifartune.study.epoch_search import EpochOptunaSearch

METRIC = "val/top1"
MAX_EPOCHS, GRACE, ETA = 27, 1, 3  # rungs at epochs 1, 3, 9
BUDGET_FRACTIONS = (0.25, 0.5, 1.0)
NOISE_SD = 0.01  # per-epoch validation noise, about that of 5,000 CIFAR-10 images
RESUME_SHARE = 0.3  # trials whose training_iteration restarts mid-trial
SPACE = {"lr": tune.loguniform(1e-4, 1.0), "width": tune.uniform(0.0, 1.0)}
REGIMES = ("no-crossing", "crossing")


def curve(regime: str, lr: float, width: float) -> np.ndarray:
    """Noise-free validation accuracy at epochs 1..MAX_EPOCHS, rising from chance (0.1) to a
    plateau q that peaks at lr = 10^-2.5, width = 0.7. Without crossing every curve has the same
    time constant, so any epoch ranks configurations as the last does; with crossing a higher lr
    rises faster (to a lower plateau), so the rung-1 and rung-3 rankings favour too high an lr."""
    u = math.log10(lr) + 2.5
    q = 0.93 - 0.05 * u**2 - 0.1 * (width - 0.7) ** 2
    tau = 4.0 if regime == "no-crossing" else min(25.0, max(0.3, 4.0 * 2.5 ** (-u)))
    epochs = np.arange(1, MAX_EPOCHS + 1)
    return q - (q - 0.1) * np.exp(-epochs / tau)


def optimum(regime: str) -> float:
    """The best true final quality over a dense grid of the space (the regret's reference)."""
    return max(
        float(curve(regime, 10.0**u, w)[-1])
        for u in np.linspace(-4, 0, 401)
        for w in np.linspace(0, 1, 101)
    )


def budget_epochs(trials: int) -> int:
    """The epochs ASHA spends on `trials` trials when it promotes 1/ETA at each rung (as
    cifartune's ``expected_asha_epochs``): the run's budget, the same for both searchers."""
    total, surviving, done, rung = 0.0, float(trials), 0, GRACE
    while True:
        top = min(rung, MAX_EPOCHS)
        total, done, surviving = total + surviving * (top - done), top, surviving / ETA
        if top == MAX_EPOCHS:
            return round(total)
        rung *= ETA


class Asha:
    """Ray's asynchronous successive halving, one bracket: at a rung (GRACE * ETA^k below max_t)
    a trial stops if its value is below the (1 - 1/ETA) percentile of the values recorded there
    before it (the first one always goes on); at max_t every trial stops."""

    def __init__(self) -> None:
        self.rungs: dict[int, list[float]] = {}
        rung = GRACE
        while rung < MAX_EPOCHS:
            self.rungs[rung] = []
            rung *= ETA

    def stop(self, epoch: int, value: float) -> bool:
        if epoch >= MAX_EPOCHS:
            return True
        recorded = self.rungs.get(epoch)
        if recorded is None:
            return False
        cutoff = np.nanpercentile(recorded, (1 - 1 / ETA) * 100) if recorded else None
        recorded.append(value)
        return bool(cutoff is not None and value < cutoff)


@dataclass
class Trial:
    """One simulated trial: its config, curve, noise, and where its iteration count restarts."""

    tid: str
    params: dict[str, float]
    values: np.ndarray  # noisy value per epoch
    final: float  # true final quality
    epoch_time: float
    restart_after: int  # epoch after which training_iteration restarts at 1; 0: never
    epoch: int = 0
    iteration: int = 0
    reported: dict[int, float] = field(default_factory=dict)


def new_trial(regime: str, seed: int, index: int, tid: str, params: dict[str, float]) -> Trial:
    # Noise and resume from (seed, index) alone: the k-th trial of both searchers' runs gets the
    # same draws, so a difference between the runs comes from the configs the searchers chose.
    rng = np.random.default_rng([seed, index])
    noise = rng.normal(0.0, NOISE_SD, MAX_EPOCHS)
    restart = int(rng.integers(2, MAX_EPOCHS)) if rng.random() < RESUME_SHARE else 0
    true = curve(regime, params["lr"], params["width"])
    epoch_time = 0.75 + 0.5 * params["width"]  # wider models train slower: results interleave
    return Trial(tid, params, true + noise, float(true[-1]), epoch_time, restart)


def make_searcher(kind: str, seed: int) -> OptunaSearch:
    searcher = (
        OptunaSearch(seed=seed)
        if kind == "old"
        else EpochOptunaSearch(seed=seed, max_epochs=MAX_EPOCHS)
    )
    searcher.set_search_properties(METRIC, "max", config=dict(SPACE))
    return searcher


def run(kind: str, regime: str, seed: int, workers: int, budget: int, top: float) -> dict[str, Any]:
    """One study: W workers start trials as they free, results come in time order until
    `budget` epochs are spent. Returns the pick's regret (against `top`) at each budget mark."""
    searcher, asha = make_searcher(kind, seed), Asha()
    queue: list[tuple[float, int, Trial]] = []  # (time the trial's next epoch ends, order, trial)
    trials: list[Trial] = []

    def start(now: float) -> None:
        tid = f"t{len(trials):04d}"
        params = searcher.suggest(tid)
        assert params is not None  # None: the searcher is done (not with these searchers)
        trial = new_trial(regime, seed, len(trials), tid, params)
        trials.append(trial)
        heapq.heappush(queue, (now + trial.epoch_time, len(trials), trial))

    for _ in range(workers):
        start(0.0)
    marks = {math.ceil(f * budget): f for f in BUDGET_FRACTIONS}
    best_value, pick, regret = -math.inf, None, {}
    for spent in range(1, budget + 1):
        now, order, trial = heapq.heappop(queue)
        trial.epoch += 1
        trial.iteration = 1 if trial.epoch == trial.restart_after + 1 else trial.iteration + 1
        value = float(trial.values[trial.epoch - 1])
        trial.reported[trial.epoch] = value
        result = {METRIC: value, "epoch": trial.epoch, "training_iteration": trial.iteration,
                  "diverged": False}  # fmt: skip
        if value > best_value:  # cifartune's pick: the best epoch value of any trial
            best_value, pick = value, trial
        if spent in marks:
            assert pick is not None
            regret[marks[spent]] = top - pick.final
        if asha.stop(trial.epoch, value):
            searcher.on_trial_complete(trial.tid, result)  # Ray: a stopping result only here
            start(now)
        else:
            searcher.on_trial_result(trial.tid, result)
            heapq.heappush(queue, (now + trial.epoch_time, order, trial))
    return {"regret": regret, "trials": len(trials), **recorded(searcher, trials)}


def recorded(searcher: OptunaSearch, trials: list[Trial]) -> dict[str, int]:
    """Per-epoch values the searcher's study holds at their own epoch, of all values seen."""
    study = cast(optuna.Study, searcher._ot_study)
    by_number = {t.number: t.intermediate_values for t in study.trials}
    held = sum(
        by_number[searcher._ot_trials[t.tid].number].get(epoch) == value
        for t in trials
        for epoch, value in t.reported.items()
    )
    return {"epochs_seen": sum(len(t.reported) for t in trials), "epochs_held": held}


def t_quantile_975(df: int) -> tuple[float, str]:
    """Student's t 0.975 quantile: scipy's where installed, else a Cornish-Fisher expansion
    around the normal quantile (within 0.001 of the exact value for df >= 4)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df)), "scipy.stats.t"
    except ImportError:
        z, v = 1.959963984540054, float(df)
        terms = (
            (z**3 + z) / 4,
            (5 * z**5 + 16 * z**3 + 3 * z) / 96,
            (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
            (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
        )
        return z + sum(c / v ** (i + 1) for i, c in enumerate(terms)), "Cornish-Fisher (no scipy)"


def summarise(runs: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], str]:
    rows, method = [], ""
    for regime in REGIMES:
        paired = {(r["seed"], r["kind"]): r for r in runs if r["regime"] == regime}
        seeds = sorted({seed for seed, _ in paired})
        for fraction in BUDGET_FRACTIONS:
            old = [paired[s, "old"]["regret"][fraction] for s in seeds]
            new = [paired[s, "new"]["regret"][fraction] for s in seeds]
            diff = [n - o for n, o in zip(new, old, strict=True)]
            mean = statistics.fmean(diff)
            tq, method = t_quantile_975(len(diff) - 1)
            half = tq * statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else 0
            rows.append({
                "regime": regime, "budget": math.ceil(fraction * budget), "fraction": fraction,
                "old": statistics.fmean(old), "new": statistics.fmean(new), "diff": mean,
                "ci": (mean - half, mean + half), "seeds": len(seeds),
                "better": sum(d < -1e-12 for d in diff), "worse": sum(d > 1e-12 for d in diff),
            })  # fmt: skip
            rows[-1]["equal"] = len(diff) - rows[-1]["better"] - rows[-1]["worse"]
    return rows, method


def table(rows: list[dict[str, Any]], runs: list[dict[str, Any]], method: str) -> str:
    lines = [
        "| regime | budget (epochs) | mean regret old | mean regret new "
        "| new − old (95% CI) | new better / equal / worse |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["ci"]
        lines.append(
            f"| {r['regime']} | {r['budget']} ({r['fraction']:.0%}) | {r['old']:.4f} "
            f"| {r['new']:.4f} | {r['diff']:+.4f} [{low:+.4f}, {high:+.4f}] "
            f"| {r['better']} / {r['equal']} / {r['worse']} |"
        )
    lines.append(f"\n{rows[0]['seeds']} paired seeds per regime; t quantile: {method}.")
    for kind in ("old", "new"):
        seen = sum(r["epochs_seen"] for r in runs if r["kind"] == kind)
        held = sum(r["epochs_held"] for r in runs if r["kind"] == kind)
        trials = statistics.fmean(r["trials"] for r in runs if r["kind"] == kind)
        lines.append(f"{kind}: per-epoch values held at their epoch {held}/{seen} "
                     f"({held / seen:.1%}); {trials:.1f} trials per run on average.")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=30, help="paired seeds per regime")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=150,
                        help="budget: the epochs ASHA spends on this many trials")  # fmt: skip
    parser.add_argument("--json", metavar="OUT", help="write raw numbers here")
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 16 trials")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.trials = 2, 16
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # TPE logs a line per trial
    # Ray's searcher re-reports a resumed trial's repeated iterations; Optuna warns per step.
    warnings.filterwarnings("ignore", message="The reported value is ignored")
    tops = {regime: optimum(regime) for regime in REGIMES}
    budget = budget_epochs(args.trials)
    started = time.perf_counter()
    runs = [
        {"kind": kind, "regime": regime, "seed": seed,
         **run(kind, regime, seed, args.workers, budget, tops[regime])}
        for regime in REGIMES
        for seed in range(args.seeds)
        for kind in ("old", "new")
    ]  # fmt: skip
    rows, method = summarise(runs, budget)
    out(table(rows, runs, method))
    took = time.perf_counter() - started
    out(f"{budget} epochs per run ({args.trials} ASHA trials' worth, grace {GRACE}, eta {ETA}, "
        f"max {MAX_EPOCHS}), {args.workers} workers; {took:.1f} s.")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "budget": budget, "optimum": tops,
                       "rows": rows, "runs": runs}, f, indent=1)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
