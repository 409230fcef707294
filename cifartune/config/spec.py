"""Study specs: a base trial config, a search space, variants, search algorithm, scheduler, budget.

Loading validates everything a study needs before Ray starts: the spec's own fields, every grid
value, distribution bound and variant against the trial config's rules, and the combinations
Ray or Optuna cannot run. What depends on the data (a subset larger than the images) needs the
data's location, so it is checked apart: :func:`data_probes` with ``describe_source``. Nothing
here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from cifartune.config.base import Section, describe_validation_error, flatten, set_dotted, unflatten
from cifartune.config.distributions import CategoricalDistribution as CategoricalDistribution
from cifartune.config.distributions import Dimension, probe_values
from cifartune.config.distributions import FloatDistribution as FloatDistribution
from cifartune.config.distributions import IntDistribution as IntDistribution
from cifartune.config.files import parse_override, read_yaml
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


class SearchSpec(Section):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    samples: int = Field(1, ge=1, le=100_000, description="draws for random/optuna")
    seed: int = Field(0, description="seed of the sampler")


class SchedulerSpec(Section):
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(3, gt=1, le=100)
    max_epochs: int | None = Field(None, ge=1, description="default: base.epochs")


class ResourcesSpec(Section):
    cpus: float = Field(1, gt=0, le=1024)
    gpus: float = Field(0, ge=0, le=64)
    max_concurrent: int | None = Field(None, ge=1)

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


class StudySpec(Section):
    """A study as written in ``studies/*.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict, description="trial config tree")
    space: dict[str, Dimension] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    metric: str = "val/top1"
    mode: Literal["max", "min"] | None = None
    repeats: int = Field(1, ge=1, le=1000, description="seeds per configuration")
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = Field("results", description="results root: a directory or a URI (s3://...)")
    checkpoint: CheckpointSpec = CheckpointSpec()
    retries: int = Field(2, ge=0, le=100, description="restarts of a failed trial")
    test_best: int = Field(1, ge=0, description="best configurations scored on the test set")
    reproduces: Literal["practical-work"] | None = Field(
        None, description="published work whose findings the report judges this study against"
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


def _check_study(spec: StudySpec, base: TrialConfig) -> None:
    """Cross-field rules between the spec's sections; each error names the field and the fix."""
    problems = []
    if spec.metric not in METRIC_MODES:
        problems.append(
            f"metric = {spec.metric!r}: not reported by the engine; use one of "
            f"{', '.join(k for k in METRIC_MODES if not k.startswith('test/'))}"
        )
    elif spec.metric.startswith("test/"):
        problems.append(
            f"metric = {spec.metric!r}: selecting on the test set biases it; "
            f"use val/{spec.metric[5:]}"
        )
    elif spec.mode is not None and spec.mode != METRIC_MODES[spec.metric]:
        problems.append(
            f"mode = {spec.mode!r}: {spec.metric} is better when "
            f"{'higher' if METRIC_MODES[spec.metric] == 'max' else 'lower'}; use mode: "
            f"{METRIC_MODES[spec.metric]} (or leave mode out)"
        )
    sched = spec.scheduler
    max_epochs = sched.max_epochs or base.epochs
    if (
        sched.max_epochs is not None
        and sched.max_epochs > base.epochs
        and "epochs" not in spec.space
    ):
        problems.append(
            f"scheduler.max_epochs = {sched.max_epochs}: trials only run "
            f"base.epochs = {base.epochs}"
        )
    if sched.name == "asha" and sched.grace_period > max_epochs:
        problems.append(
            f"scheduler.grace_period = {sched.grace_period}: must be <= max epochs ({max_epochs}), "
            "or ASHA can never stop a trial"
        )
    for key in spec.space:
        if key in STUDY_WIDE_KEYS:
            problems.append(
                f"space.{key}: the data source is loaded once per study; set it in base"
            )
        if key in (SEED_KEY, VARIANT_KEY):
            problems.append(
                f"space.{key}: reserved; use `repeats` for seeds, `variants` for variants"
            )
    for name, overrides in spec.variants.items():
        for key in overrides:
            if key in STUDY_WIDE_KEYS:
                problems.append(
                    f"variants.{name}.{key}: the data source is study-wide; set it in base"
                )
            elif key in spec.space or (key == SEED_KEY and spec.repeats > 1):
                owner = "space" if key in spec.space else "repeats"
                problems.append(
                    f"variants.{name}.{key}: {owner} sets {key} for every trial, so this "
                    f"variant's value never applies; remove it from the variant or from {owner}"
                )
    if spec.search.algorithm == "grid":
        for key, dim in spec.space.items():
            if not isinstance(dim, list):
                problems.append(
                    f"space.{key}: a {dim.type} distribution needs search.algorithm random or "
                    "optuna; the grid algorithm expands lists only"
                )
        if spec.search.samples != 1:
            problems.append("search.samples: the grid algorithm runs each point once; use repeats")
    trials = trial_count(spec)
    if trials > MAX_TRIALS:
        axes = " x ".join(f"{len(v)} {k}" for k, v in grid_axes(spec).items())
        problems.append(
            f"space: the study expands to {trials:,} trials ({axes or 'one configuration'} x "
            f"{spec.search.samples} samples); a study holds at most {MAX_TRIALS:,} (Ray Tune "
            "keeps every trial in memory); shorten the lists, or sample the space: "
            "search.algorithm random with search.samples N"
        )
    if spec.search.algorithm == "optuna" and spec.repeats > 1:
        problems.append(
            "repeats: Optuna samples one seed per configuration; use repeats with grid or random "
            "search (the best configurations are re-scored on the test set after the search)"
        )
    if spec.search.algorithm == "optuna" and not spec.space and not spec.variants:
        problems.append("space: Optuna needs something to search; add space entries")
    if spec.resources.gpus == 0 and base.device == "cuda":
        problems.append("base.device = 'cuda' but resources.gpus = 0; give trials a GPU share")
    if problems:
        raise ConfigError("\n".join(problems))


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


def _probes(spec: StudySpec) -> list[tuple[str, dict[str, Any]]]:
    """(where, sample) for every variant, grid value and distribution bound of `spec`."""
    checks = [(f"variants.{name}", {VARIANT_KEY: name}) for name in spec.variants]
    for key, dim in spec.space.items():
        checks += [(f"space.{key}", {key: value}) for value in probe_values(dim)]
    return checks


def _validate_against_config(spec: StudySpec) -> TrialConfig:
    """Every variant, grid value and distribution bound must make a valid trial config."""
    base = build_trial_config(spec.base, prefix="base.")
    problems: list[str] = []
    for where, sample in _probes(spec):
        try:
            trial_config(spec, sample)
        except ConfigError as exc:
            problems.extend(_located(where, line) for line in str(exc).splitlines())
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return base


def _located(where: str, problem: str) -> str:
    """`problem` of a trial config, said where the spec sets it: ``space.model.dropuot:
    unknown key`` rather than ``space.model.dropuot: model.dropuot: unknown key``."""
    key = where.removeprefix("space.")
    if where.startswith("space.") and problem.startswith(key):
        return "space." + problem
    return f"{where}: {problem}"


def _apply_spec_override(tree: dict[str, Any], key: str, value: Any) -> None:
    """``space.optim.lr=...``, ``variants.NAME.optim.lr=...``: the config key stays whole."""
    head, _, rest = key.partition(".")
    if head == "space" and rest:
        tree.setdefault("space", {})[rest] = value
    elif head == "variants" and "." in rest:
        name, _, config_key = rest.partition(".")
        tree.setdefault("variants", {}).setdefault(name, {})[config_key] = value
    elif head == "base" and rest:
        set_dotted(tree.setdefault("base", {}), rest, value)
    else:
        set_dotted(tree, key, value)


def build_spec(tree: Mapping[str, Any], overrides: Iterable[str] = ()) -> StudySpec:
    merged = json.loads(json.dumps(tree, default=str))
    for text in overrides:
        _apply_spec_override(merged, *parse_override(text))
    if isinstance(merged.get("base"), dict):
        merged["base"] = unflatten(flatten(merged["base"]))  # allow "optim.lr: 0.1" in base too
    try:
        spec = StudySpec.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, StudySpec)) from None
    base = _validate_against_config(spec)
    _check_study(spec, base)
    return spec


def load_spec(path: Path, overrides: Iterable[str] = ()) -> StudySpec:
    """Read, merge ``--set`` overrides into, and fully validate the study spec at `path`."""
    return build_spec(read_yaml(path), overrides)


# Where a study's data and results live, not what it trains: a study may resume elsewhere.
LOCATION_KEYS = ("data.dir", "data.download")


def spec_hash(spec: StudySpec) -> str:
    """Identity of a study's design: the same spec hashes the same wherever it is stored and
    wherever its data lives."""
    # `reproduces` says how the report reads the study, not what it trains: declaring it on a
    # study that ran without it (or before the key existed) keeps the study's identity, so its
    # results are not taken for another spec's and `resume` still continues it.
    payload = spec.model_dump(mode="json", exclude={"storage", "description", "reproduces"})
    payload["base"] = {k: v for k, v in flatten(payload["base"]).items() if k not in LOCATION_KEYS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
