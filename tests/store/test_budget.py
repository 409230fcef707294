"""What a study spent against its budget, from its files alone: its drivers' time (a killed
driver's up to its last heartbeat), the CPU- and GPU-hours its trials held, the best value of
the target's metric; the limit reached, in words; what is left."""

import math

from cifartune.config.sections import BudgetSpec
from cifartune.storage import Location
from cifartune.store.budget import (
    BudgetUse,
    budget_use,
    left,
    reached,
    read_reached,
    record_reached,
    runs_wall_seconds,
)

RUNS = [
    {"started": "2026-01-01T00:00:00+00:00", "until": "2026-01-01T01:00:00+00:00"},
    {"started": "2026-01-02T00:00:00+00:00", "until": "2026-01-02T00:30:00+00:00"},  # killed
]
EPOCHS = [
    {"epoch": 1, "time/epoch_s": 600.0, "val/top1": 40.0},
    {"epoch": 2, "time/epoch_s": 600.0, "val/top1": 55.0},
    {"epoch": 1, "time/epoch_s": 1200.0, "val/top1": math.nan},  # a diverged trial's epoch
]


def test_wall_is_the_sum_of_the_drivers_runs():
    assert runs_wall_seconds(RUNS) == 5400
    assert runs_wall_seconds([*RUNS, {"started": "2026-01-03T00:00:00+00:00"}]) == 5400


def test_reserved_hours_and_the_best_target_value_come_from_the_epoch_rows():
    budget = BudgetSpec(wall="2h", gpu_hours=1, cpu_hours=10, target={"val/top1": 60})
    use = budget_use(budget, RUNS, EPOCHS, cpus=2, gpus=0.5)
    assert (use.wall_s, use.cpu_s, use.gpu_s, use.best) == (5400, 4800, 1200, 55.0)
    assert reached(budget, use) is None
    assert left(budget, use) == [
        "wall 1h 30m / 2h (30m 00s left)",
        "GPU-hours 0.33 / 1 (0.67 left)",
        "CPU-hours 1.33 / 10 (8.67 left)",
        "target val/top1 60 (best so far 55)",
    ]


def test_the_first_limit_reached_is_named_with_what_was_spent():
    assert reached(BudgetSpec(wall="90m"), BudgetUse(wall_s=5400)) == (
        "budget: wall 90m reached (1h 30m spent)"
    )
    assert reached(BudgetSpec(gpu_hours=1), BudgetUse(gpu_s=3600)).startswith(
        "budget: 1 GPU-hours reached"
    )
    assert reached(BudgetSpec(target={"val/top1": 55}), BudgetUse(best=55.0)) == (
        "budget: target val/top1 55 reached (55)"
    )
    loss = BudgetSpec(target={"val/loss": 1.0})  # a loss is reached from above
    assert reached(loss, BudgetUse(best=1.2)) is None
    assert reached(loss, BudgetUse(best=0.9)).startswith("budget: target val/loss 1 reached")


def test_the_limit_reached_is_written_once(tmp_path):
    directory = Location.of(tmp_path)
    assert read_reached(directory) is None
    record_reached(directory, "budget: wall 1h reached (1h 00m spent)", "t1")
    record_reached(directory, "budget: target val/top1 80 reached (81)", "t2")
    assert read_reached(directory) == "budget: wall 1h reached (1h 00m spent)"
