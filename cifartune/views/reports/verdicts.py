"""Three-outcome verdicts on measured claims, decided by 95% t-intervals (unrounded numbers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from .stats import Estimate, fmt_interval, fmt_number


class Outcome(Enum):
    REPRODUCES = "reproduces"
    FAILS = "does not reproduce"
    INCONCLUSIVE = "inconclusive at this fidelity"


RULE = (
    "How a finding is judged: it is split into measurable claims. A claim about an effect takes "
    "the difference between the variant's mean over seeds and the mean of what the practical work "
    "compared it with, and its 95% Welch t-interval. The claim reproduces when the whole interval "
    "lies on the reported side of the threshold (0 unless the claim names one), does not "
    "reproduce when the whole interval lies on the other side, and is inconclusive at this "
    "fidelity when the interval contains the threshold. A claim about a level (such as chance at "
    "initialization) compares the t-interval of the mean with a stated band the same way. "
    "Thresholds apply to the unrounded numbers. A finding reproduces when all its claims do, does "
    "not when any claim does not, and is inconclusive otherwise; a row that does not reproduce "
    "says what was measured that explains it."
)


@dataclass(frozen=True)
class Check:
    text: str
    outcome: Outcome
    spans: bool = False  # an interval that contains its threshold (too few seeds, or no effect)


def _decide(low: float, high: float, threshold: float, higher: bool) -> Outcome:
    if not (math.isfinite(low) and math.isfinite(high)):
        return Outcome.INCONCLUSIVE
    above, below = low > threshold, high < threshold
    if above or below:
        return Outcome.REPRODUCES if above == higher else Outcome.FAILS
    return Outcome.INCONCLUSIVE


def effect(
    what: str,
    diff: Estimate,
    *,
    higher: bool,
    threshold: float = 0.0,
    digits: int = 1,
    unit: str = "",
) -> Check:
    """A claim that `diff` is above (higher) or below `threshold`."""
    outcome = _decide(diff.low, diff.high, threshold, higher)
    target = f"{'>' if higher else '<'} {threshold:g}{unit}" if threshold else ""
    claim = f" (claim: {target})" if target else ""
    return Check(
        f"{what} {fmt_interval(diff, digits, unit)}{claim}: {outcome.value}",
        outcome,
        spans=outcome is Outcome.INCONCLUSIVE and diff.has_interval,
    )


def within(what: str, est: Estimate, low: float, high: float, digits: int = 1) -> Check:
    """A claim that the mean lies in [low, high]."""
    if not est.has_interval:
        outcome = Outcome.INCONCLUSIVE
    elif low <= est.low and est.high <= high:
        outcome = Outcome.REPRODUCES
    elif est.high < low or est.low > high:
        outcome = Outcome.FAILS
    else:
        outcome = Outcome.INCONCLUSIVE
    interval = (
        f" (95% CI {fmt_number(est.low, digits)} to {fmt_number(est.high, digits)})"
        if est.has_interval
        else ""
    )
    return Check(
        f"{what} {fmt_number(est.mean, digits)}{interval}, band {low:g} to {high:g}: "
        f"{outcome.value}",
        outcome,
    )


@dataclass
class Finding:
    """One row of the seed table: the practical work's finding and what these studies measured."""

    step: str
    setting: str
    reported: str
    fidelity: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # measured context that is not a claim
    reasons: list[str] = field(default_factory=list)  # measured causes, shown unless it reproduces

    @property
    def outcome(self) -> Outcome:
        outcomes = {c.outcome for c in self.checks}
        if not outcomes:
            return Outcome.INCONCLUSIVE
        if Outcome.FAILS in outcomes:
            return Outcome.FAILS
        return Outcome.REPRODUCES if outcomes == {Outcome.REPRODUCES} else Outcome.INCONCLUSIVE
