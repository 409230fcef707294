"""The sections of a study spec besides the trial config: search, scheduler (FIFO, ASHA or
population-based training), resources, checkpoints and the budget. Each validates its own
fields; the rules between sections are in :mod:`cifartune.config.spec`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cifartune.config.base import Section
from cifartune.config.distributions import Dimension

# What PBT may change in a trial that goes on training from another trial's weights and
# optimizer state: optimizer hyperparameters, regularization and augmentation strength. Not what
# changes the network's shape (batch norm), the meaning of an epoch (batch size, the data split)
# or the optimizer's kind: the copied state would not fit.
MUTABLE_KEYS = (
    "optim.lr", "optim.momentum", "optim.weight_decay", "model.dropout",
    "data.crop_padding", "data.cutout_size", "data.rotate_degrees", "data.jitter_brightness",
    "data.jitter_contrast", "data.jitter_saturation", "data.jitter_hue",
)  # fmt: skip
# Units of a wall-clock budget, in seconds.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhd])+$")


def duration_seconds(text: str) -> float:
    """``"6h"``, ``"90m"``, ``"1h30m"``, ``"2d"`` in seconds."""
    return sum(
        float(number) * DURATION_UNITS[unit]
        for number, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    )


class SearchSpec(Section):
    """How trials are drawn from the space."""

    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid",
        description="grid: every combination of the lists; random: search.samples draws of "
        "the distributions for each grid point; optuna: TPE, told each epoch's value",
    )
    samples: int = Field(1, ge=1, le=100_000, description="draws for random/optuna")
    seed: int = Field(0, description="seed of the sampler")


class SchedulerSpec(Section):
    """When trials stop early (ASHA) or exploit and explore (PBT)."""

    name: Literal["fifo", "asha", "pbt"] = Field(
        "fifo",
        description="fifo: every trial runs its epochs; asha: asynchronous successive halving "
        "stops the worse trials at its rungs; pbt: population-based training",
    )
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before it may stop a trial")
    reduction_factor: float = Field(
        3, gt=1, le=100, description="ASHA: 1/this of the trials go on at each rung"
    )
    max_epochs: int | None = Field(
        None, ge=1, description="ASHA: the epochs of the trials it never stops; default base.epochs"
    )
    perturbation_interval: int = Field(
        4,
        ge=1,
        description="PBT: epochs between two exploit/explore steps; every trial of the "
        "population steps at the same epochs",
    )
    quantile_fraction: float = Field(
        0.25,
        gt=0,
        le=0.5,
        description="PBT: the bottom fraction of trials exploits (copies) the top fraction",
    )
    resample_probability: float = Field(
        0.25,
        ge=0,
        le=1,
        description="PBT: chance that an explored value is drawn afresh instead of perturbed "
        "(x0.8 or x1.2; the next choice up or down)",
    )
    mutations: dict[str, Dimension] = Field(
        default_factory=dict,
        description="PBT: the keys it may change and their ranges or choices (as in space); "
        f"mutable: {', '.join(MUTABLE_KEYS)}",
    )

    @field_validator("mutations")
    @classmethod
    def _mutable(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key not in MUTABLE_KEYS:
                raise ValueError(
                    f"{key} cannot change while a trial trains: PBT copies a trial's weights and "
                    "optimizer state to another and changes only what fits that state; mutable: "
                    f"{', '.join(MUTABLE_KEYS)}"
                )
        return value


class ResourcesSpec(Section):
    """What one trial holds while it runs."""

    cpus: float = Field(1, gt=0, le=1024, description="CPUs per trial (its torch threads)")
    gpus: float = Field(
        0, ge=0, le=64, description="GPUs per trial: 1, or a fraction to pack trials on a GPU"
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="trials at once at most; default: as many as the machine holds"
    )

    @field_validator("gpus")
    @classmethod
    def _one_device_at_most(cls, value: float) -> float:
        # A trial trains on one device (DeviceData, one model): Ray would reserve the others
        # for the trial's lifetime and nothing would run on them.
        if value > 1:
            raise ValueError(
                f"a trial trains on one device, so {value:g} GPUs per trial would leave "
                f"{value - 1:g} idle; use 1 (a GPU of its own) or a fraction in (0, 1) to pack "
                "several trials on one GPU (0.25: 4 at once)"
            )
        return value


class CheckpointSpec(Section):
    """Each trial keeps two checkpoints: the latest (to resume from) and the model of its best
    epoch by the study metric (scored on the test set), saved whenever the metric improves."""

    every: int = Field(1, ge=1, description="epochs between latest checkpoints (and the last)")


class BudgetSpec(Section):
    """Limits on what a study may spend, counted from its results directory across resumes: the
    first reached ends the study (no new trial starts, running trials stop at their next epoch,
    the best are scored on the test set, the study is completed)."""

    wall: str | None = Field(
        None,
        description="time the study's drivers run, e.g. 90m, 6h, 1h30m, 2d (time between an "
        "interruption and its resume does not count)",
    )
    gpu_hours: float | None = Field(
        None, gt=0, description="GPU-hours the trials hold while training (resources.gpus)"
    )
    cpu_hours: float | None = Field(
        None, gt=0, description="CPU-hours the trials hold while training (resources.cpus)"
    )
    target: dict[str, float] | None = Field(
        None,
        description="stop once a trial's epoch reaches a value of a recorded metric, e.g. "
        "{val/top1: 80} (at least, for an accuracy; at most, for a loss)",
    )

    @field_validator("wall", mode="before")
    @classmethod
    def _unit_given(cls, value: Any) -> Any:
        # `--set budget.wall=90` arrives as a number: say what is missing, not "not a string".
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(
                f"{value} has no unit: write {value}s, {value}m or {value}h (units: s, m, h, d)"
            )
        return value

    @field_validator("wall")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and not _DURATION.match(value.strip()):
            raise ValueError("a duration with units, e.g. 90m, 6h, 1h30m, 2d (units: s, m, h, d)")
        if value is not None and duration_seconds(value) <= 0:
            raise ValueError("must be more than 0")
        return value

    @field_validator("target")
    @classmethod
    def _one_target(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and len(value) != 1:
            raise ValueError("one metric and its value, e.g. {val/top1: 80}")
        return value

    @model_validator(mode="after")
    def _something(self) -> BudgetSpec:
        if all(v is None for v in (self.wall, self.gpu_hours, self.cpu_hours, self.target)):
            raise ValueError(
                "budget: give at least one limit (wall, gpu_hours, cpu_hours, target), or leave "
                "budget out"
            )
        return self

    @property
    def wall_seconds(self) -> float | None:
        return None if self.wall is None else duration_seconds(self.wall)
