"""Study specs: a base trial config, a search space, variants, search algorithm, scheduler, budget.

Loading validates everything a study needs before Ray starts: the spec's own fields, every grid
value, distribution bound and variant against the trial config's rules, and the combinations
Ray or Optuna cannot run. What depends on the data (a subset larger than the images) needs the
data's location, so it is checked apart: :func:`data_probes` with ``describe_source``. Nothing
here imports Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from .config import (
    ConfigError,
    DataConfig,
    Section,
    TrialConfig,
    build_trial_config,
    describe_validation_error,
    flatten,
    parse_override,
    read_yaml,
    set_dotted,
    unflatten,
)

# The distributions are re-exported: a spec's users (tuning, tests) import them from here.
from .distributions import CategoricalDistribution as CategoricalDistribution
from .distributions import Dimension, probe_values
from .distributions import FloatDistribution as FloatDistribution
from .distributions import IntDistribution as IntDistribution

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
# against that work's findings (cifartune/reports/findings.py), and no other study.
PRACTICAL_WORK = "practical-work"
REPRODUCIBLE = (PRACTICAL_WORK,)


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

    @field_validator("reproduces", mode="before")
    @classmethod
    def _known_work(cls, value: Any) -> Any:
        # Before pydantic's own check, so that the message lists what a study may reproduce.
        if value is not None and value not in REPRODUCIBLE:
            raise ValueError(
                f"unknown work; allowed: {', '.join(REPRODUCIBLE)} (or leave the key out)"
            )
        return value

    @property
    def resolved_mode(self) -> str:
        return self.mode or METRIC_MODES.get(self.metric, "max")


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
    if spec.search.algorithm == "grid":
        for key, dim in spec.space.items():
            if not isinstance(dim, list):
                problems.append(
                    f"space.{key}: a {dim.type} distribution needs search.algorithm random or "
                    "optuna; the grid algorithm expands lists only"
                )
        if spec.search.samples != 1:
            problems.append("search.samples: the grid algorithm runs each point once; use repeats")
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


def _variant_overrides(spec: StudySpec, name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The overrides of variant `name`, following its ``extends`` chain (parent first)."""
    if name in seen:
        raise ConfigError(f"variants.{name}.extends: cycle {' -> '.join((*seen, name))}")
    if name not in spec.variants:
        raise ConfigError(f"variants.{seen[-1]}.extends = {name!r}: no such variant")
    own = dict(spec.variants[name])
    parent = own.pop("extends", None)
    merged = _variant_overrides(spec, parent, (*seen, name)) if parent else {}
    merged.update(own)
    return merged


def _grid_axes(spec: StudySpec) -> dict[str, list[Any]]:
    """The lists that multiply into trials: variants, grid dimensions, seeds."""
    axes: dict[str, list[Any]] = {}
    if spec.variants:
        axes[VARIANT_KEY] = list(spec.variants)
    axes.update({k: v for k, v in spec.space.items() if isinstance(v, list)})
    if spec.repeats > 1:
        base_seed = int(spec.base.get(SEED_KEY, 0))
        axes[SEED_KEY] = [base_seed + i for i in range(spec.repeats)]
    return axes


def grid_points(spec: StudySpec) -> Iterator[dict[str, Any]]:
    axes = _grid_axes(spec)
    for values in itertools.product(*axes.values()):
        yield dict(zip(axes, values, strict=True))


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


def data_probes(spec: StudySpec) -> list[tuple[str, DataConfig]]:
    """(where, data section) of every distinct data setup the study's trials can have, other
    than base's: for :func:`cifartune.data.describe_source` to check against the dataset's size
    (``describe_source(trial_config(spec, {}).data, also=data_probes(spec))``).

    The data keys of a trial come from its variant and from the ``space.data.*`` dimensions
    together (a variant's val_size with a grid's train_subset), so their product is probed:
    each variant times each value or bound of each data dimension. Kept out of
    :func:`build_spec`, which runs without the data (``status``, ``submit`` from a laptop).
    """
    axes: dict[str, list[Any]] = {VARIANT_KEY: list(spec.variants)} if spec.variants else {}
    axes.update({k: probe_values(d) for k, d in spec.space.items() if k.startswith("data.")})
    base = trial_config(spec, {}).data
    seen: dict[DataConfig, str] = {base: "base"}
    problems = []
    for values in itertools.product(*axes.values()):
        sample = dict(zip(axes, values, strict=True))
        where = " with ".join(
            f"variants.{v}" if k == VARIANT_KEY else f"space.{k}" for k, v in sample.items()
        )
        try:
            seen.setdefault(trial_config(spec, sample).data, where)
        except ConfigError as exc:  # each value is valid alone (build_spec), not this mix
            problems.append(f"{where}: {exc}".replace("\n", f"\n{where}: "))
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return [(where, data) for data, where in seen.items() if where != "base"]


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


def trial_count(spec: StudySpec) -> int:
    grid = math.prod(len(v) for v in _grid_axes(spec).values())
    if spec.search.algorithm == "optuna":
        return spec.search.samples
    return grid * spec.search.samples


def max_epochs(spec: StudySpec, base: TrialConfig | None = None) -> int:
    return spec.scheduler.max_epochs or (base or build_trial_config(spec.base)).epochs


def asha_rungs(spec: StudySpec) -> list[int]:
    """Epochs at which ASHA compares trials: grace * eta^k below max epochs."""
    top = max_epochs(spec)
    rungs, rung = [], float(spec.scheduler.grace_period)
    while rung < top:
        rungs.append(int(rung))
        rung *= spec.scheduler.reduction_factor
    return rungs


def expected_asha_epochs(spec: StudySpec, trials: int) -> float:
    """Epochs spent if ASHA promotes exactly 1/eta of the trials at each rung (its target)."""
    top = max_epochs(spec)
    eta = spec.scheduler.reduction_factor
    total, surviving, done = 0.0, float(trials), 0
    for rung in [*asha_rungs(spec), top]:
        total += surviving * (rung - done)
        done = rung
        surviving /= eta
    return total


@dataclass(frozen=True)
class Plan:
    """What a study will run, computed without starting Ray (``cifartune run --dry-run``)."""

    trials: int
    epochs_per_trial: int
    worst_case_epochs: int
    expected_epochs: float | None  # under ASHA
    rungs: list[int]
    concurrent: int
    waves: int
    bottleneck: str


def plan(spec: StudySpec, *, cpus: float, gpus: float) -> Plan:
    """Count trials and epochs and pack trials onto `cpus` and `gpus` (one machine or cluster)."""
    trials = trial_count(spec)
    epochs = max_epochs(spec)
    res = spec.resources
    limits = {"CPUs": math.floor(cpus / res.cpus + 1e-9)}
    if res.gpus > 0:
        limits["GPUs"] = math.floor(gpus / res.gpus + 1e-9)
    if res.max_concurrent is not None:
        limits["max_concurrent"] = res.max_concurrent
    bottleneck = min(limits, key=lambda k: limits[k])
    concurrent = min(limits[bottleneck], trials)
    asha = spec.scheduler.name == "asha"
    return Plan(
        trials=trials,
        epochs_per_trial=epochs,
        worst_case_epochs=trials * epochs,
        expected_epochs=expected_asha_epochs(spec, trials) if asha else None,
        rungs=asha_rungs(spec) if asha else [],
        concurrent=concurrent,
        waves=math.ceil(trials / concurrent) if concurrent else 0,
        bottleneck=bottleneck,
    )
