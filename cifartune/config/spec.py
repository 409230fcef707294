"""Study specs: a base trial config, a search space, variants, search algorithm, scheduler,
resources, budget (:class:`StudySpec`); what a trial of a spec is (:func:`trial_config`), how
many there are, and the study's identity (:func:`spec_hash`). Loading and checking a spec is
:mod:`cifartune.config.validation`. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from cifartune.config.base import Section, flatten
from cifartune.config.distributions import CategoricalDistribution as CategoricalDistribution
from cifartune.config.distributions import Dimension
from cifartune.config.distributions import FloatDistribution as FloatDistribution
from cifartune.config.distributions import IntDistribution as IntDistribution
from cifartune.config.sections import (
    BudgetSpec,
    CheckpointSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
)
from cifartune.config.trial import TrialConfig, build_trial_config
from cifartune.errors import ConfigError

# Metrics fit() reports every epoch, and the direction that is better for each.
METRIC_MODES = {
    f"{split}/{name}": ("min" if name == "loss" else "max")
    for split in ("train", "val", "test")
    for name in ("loss", "top1", "top5")
}
# Keys a study samples per trial besides the space: which variant, which repeat.
VARIANT_KEY = "variant"
SEED_KEY = "seed"
# Data location is loaded once per study and shared through Ray's object store.
STUDY_WIDE_KEYS = ("data.source", "data.dir", "data.download", "device")
# Works a study may declare it reproduces (`reproduces:`): the report judges a declared study
# against that work's findings (cifartune/views/reports/findings.py), and no other study.
PRACTICAL_WORK = "practical-work"
REPRODUCIBLE = (PRACTICAL_WORK,)
# Ray Tune keeps every trial of a study in memory and in each experiment snapshot: past this,
# a study cannot run (a grid is a product: a few long lists reach billions).
MAX_TRIALS = 100_000
# URI schemes pyarrow.fs resolves (storage, data.dir); anything else fails only when run.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def metric_mode(metric: str, mode: str | None = None) -> str:
    """The direction in which `metric` is better: the spec's `mode` where it gives one, else
    the metric's own (min for a loss, max for an accuracy)."""
    return mode or METRIC_MODES.get(metric, "max")


class StudySpec(Section):
    """A study as written in ``studies/*.yaml``."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        description="the study's name: its results go to <storage>/<name>",
    )
    description: str = Field("", description="free text, shown in reports")
    base: dict[str, Any] = Field(
        default_factory=dict,
        description="the trial config every trial starts from (nested sections or dotted keys)",
    )
    space: dict[str, Dimension] = Field(
        default_factory=dict,
        description="config keys to search: a list is a grid axis (a categorical under optuna); "
        "{type: float|int, low, high, log} or {type: categorical, choices} a distribution",
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named sets of config overrides, each run as a configuration; extends: "
        "another variant's overrides first",
    )
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    metric: str = Field("val/top1", description="what trials are compared, stopped and selected by")
    mode: Literal["max", "min"] | None = Field(
        None, description="the metric's better direction; default: its own (min for a loss)"
    )
    repeats: int = Field(
        1, ge=1, le=1000, description="seeds per configuration (seed, seed+1, ...)"
    )
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = Field(
        "results", description="results root: a directory or a URI (s3://bucket/prefix)"
    )
    checkpoint: CheckpointSpec = CheckpointSpec()
    retries: int = Field(
        2, ge=0, le=100, description="restarts of a failed trial from its last checkpoint"
    )
    test_best: int = Field(
        1, ge=0, description="best configurations scored once on the test set at the end"
    )
    reproduces: Literal["practical-work"] | None = Field(
        None, description="published work whose findings the report judges this study against"
    )
    budget: BudgetSpec | None = Field(
        None, description="limits on what the study spends (see budget.*); none by default"
    )

    @field_validator("storage")
    @classmethod
    def _reachable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty; give a directory (e.g. results) or a URI (s3://bucket/prefix)")
        scheme, sep, _ = value.partition("://")
        if sep and scheme.lower() not in STORAGE_SCHEMES:
            raise ValueError(
                f"no filesystem resolves the scheme {scheme!r}; use a directory or one of "
                f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}"
            )
        return value

    @field_validator("reproduces", mode="before")
    @classmethod
    def _known_work(cls, value: Any) -> Any:
        # Before pydantic's own check, so that the message lists what a study may reproduce.
        if value is not None and value not in REPRODUCIBLE:
            raise ValueError(
                f"unknown work; allowed: {', '.join(REPRODUCIBLE)} (or leave the key out)"
            )
        return value


def _variant_overrides(spec: StudySpec, name: str) -> dict[str, Any]:
    """The overrides of variant `name`, following its ``extends`` chain (parent first)."""
    chain: list[str] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen:
            raise ConfigError(f"variants.{current}.extends: cycle {' -> '.join((*chain, current))}")
        if current not in spec.variants:
            raise ConfigError(f"variants.{chain[-1]}.extends = {current!r}: no such variant")
        chain.append(current)
        seen.add(current)
        current = spec.variants[current].get("extends")
    merged: dict[str, Any] = {}
    for variant in reversed(chain):
        merged.update({k: v for k, v in spec.variants[variant].items() if k != "extends"})
    return merged


def grid_axes(spec: StudySpec) -> dict[str, list[Any]]:
    """The lists that multiply into trials: variants, grid dimensions, seeds."""
    axes: dict[str, list[Any]] = {}
    if spec.variants:
        axes[VARIANT_KEY] = list(spec.variants)
    axes.update({k: v for k, v in spec.space.items() if isinstance(v, list)})
    if spec.repeats > 1:
        base_seed = int(spec.base.get(SEED_KEY, 0))
        axes[SEED_KEY] = [base_seed + i for i in range(spec.repeats)]
    return axes


def trial_count(spec: StudySpec) -> int:
    """Trials the study runs: the grid (variants, lists, seeds) times the samples; under
    Optuna, the samples."""
    grid = math.prod(len(v) for v in grid_axes(spec).values())
    if spec.search.algorithm == "optuna":
        return spec.search.samples
    return grid * spec.search.samples


def trial_config(spec: StudySpec, sample: Mapping[str, Any]) -> TrialConfig:
    """The typed config of one trial: base, then its variant's overrides, then sampled keys.

    A trial runs on the CPU unless the spec gives it a GPU share, and uses as many torch threads
    as it has CPUs (unless base sets threads).
    """
    overrides: dict[str, Any] = {}
    if VARIANT_KEY in sample:
        overrides.update(_variant_overrides(spec, sample[VARIANT_KEY]))
    overrides.update({k: v for k, v in sample.items() if k != VARIANT_KEY})
    if spec.resources.gpus == 0:
        overrides.setdefault("device", "cpu")
    if "threads" not in spec.base:
        overrides.setdefault("threads", max(1, int(spec.resources.cpus)))
    return build_trial_config(spec.base, overrides, prefix="")


# Scheduler keys that came with population-based training (see spec_hash).
LATER_SCHEDULER_KEYS = (
    "perturbation_interval", "quantile_fraction", "resample_probability", "mutations"
)  # fmt: skip
# Where a study's data lives, not what it trains: a study may resume elsewhere (spec_hash).
LOCATION_KEYS = ("data.dir", "data.download")
# What `resume --set` may change: where the data lives, and the budget (how long it may run).
RESUME_KEYS = (*(f"base.{key}" for key in LOCATION_KEYS), "budget")


def resume_may_set(key: str) -> bool:
    """Whether `resume --set KEY=...` keeps the study what it was (RESUME_KEYS)."""
    key = key if key.startswith(("base.", "budget")) else f"base.{key}"
    return key in RESUME_KEYS or key.startswith("budget.")


def spec_hash(spec: StudySpec) -> str:
    """Identity of a study's design: the same spec hashes the same wherever it is stored and
    wherever its data lives."""
    # `reproduces` says how the report reads the study, not what it trains: declaring it on a
    # study that ran without it (or before the key existed) keeps the study's identity, so its
    # results are not taken for another spec's and `resume` still continues it.
    # The budget is how long the study may run, not what it trains: a resume may extend it.
    exclude = {"storage", "description", "reproduces", "budget"}
    payload = spec.model_dump(mode="json", exclude=exclude)
    payload["base"] = {k: v for k, v in flatten(payload["base"]).items() if k not in LOCATION_KEYS}
    # Keys added to the scheduler after studies were run: at their defaults they are what those
    # studies ran, so their identity (and their resume) stays.
    defaults = SchedulerSpec().model_dump(mode="json")
    for key in LATER_SCHEDULER_KEYS:
        if payload["scheduler"][key] == defaults[key]:
            del payload["scheduler"][key]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
