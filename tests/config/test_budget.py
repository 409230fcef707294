"""A study's budget as a spec states it: limits with units, one target on a recorded metric,
refused with one message naming the field when it could never be reached."""

import pytest

from cifartune.config.sections import BudgetSpec, duration_seconds
from cifartune.config.spec import spec_hash
from cifartune.config.validation import build_spec
from cifartune.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("6h", 21600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1.5h", 5400),
    ],
)
def test_wall_takes_a_duration_with_units(text, seconds):
    assert duration_seconds(text) == seconds
    assert BudgetSpec(wall=text).wall_seconds == seconds


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"wall": "0h"}, "budget.wall = '0h': must be more than 0"),
        ({"wall": "6"}, "budget.wall = '6': a duration with units"),
        ({"wall": 90}, "budget.wall = 90: 90 has no unit: write 90s, 90m or 90h"),
        ({"wall": "6 hours"}, "budget.wall = '6 hours': a duration with units"),
        ({"wall": "-1h"}, "budget.wall = '-1h': a duration with units"),
        ({"gpu_hours": 0}, "budget.gpu_hours = 0: Input should be greater than 0"),
        ({"cpu_hours": -3}, "budget.cpu_hours = -3: Input should be greater than 0"),
        ({"target": {"val/top1": 80, "val/loss": 1}}, "budget.target = "),
        ({"target": {"val/accuracy": 80}}, "budget.target.val/accuracy: not a metric"),
        ({"target": {"test/top1": 80}}, "budget.target.test/top1: not a metric the study"),
        ({"gpu_hours": 10}, "budget.gpu_hours: the trials hold no GPU"),
        ({}, "budget: give at least one limit"),
        ({"walls": "6h"}, "budget.walls: unknown key; did you mean 'wall'?"),
    ],
)
def test_a_budget_that_cannot_work_is_refused_naming_the_field(budget, message):
    with pytest.raises(ConfigError) as caught:
        build_spec({"name": "s", "budget": budget})
    assert message in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_a_budget_is_not_part_of_the_studys_identity():
    # It says how long the study may run, not what it trains: a resume may extend it.
    plain = build_spec({"name": "s"})
    budgeted = build_spec({"name": "s", "budget": {"wall": "6h", "target": {"val/top1": 80}}})
    assert spec_hash(plain) == spec_hash(budgeted)
