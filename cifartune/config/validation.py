"""A study spec loaded and checked: ``--set`` overrides merged in, every field validated, every
grid value, distribution bound, mutation range and variant checked against the trial config's
rules, and the combinations Ray or Optuna cannot run refused, each with a message naming the
field and the fix. What depends on the data (a subset larger than the images) needs the data's
location, so it is checked apart (see :func:`cifartune.config.expand.data_probes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cifartune.config.base import describe_validation_error, flatten, set_dotted, unflatten
from cifartune.config.distributions import probe_values
from cifartune.config.files import parse_override, read_yaml
from cifartune.config.spec import (
    MAX_TRIALS,
    METRIC_MODES,
    SEED_KEY,
    STUDY_WIDE_KEYS,
    VARIANT_KEY,
    StudySpec,
    grid_axes,
    trial_config,
    trial_count,
)
from cifartune.config.trial import TrialConfig, build_trial_config
from cifartune.errors import ConfigError


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
    problems += _pbt_problems(spec, base) + _budget_problems(spec)
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
            elif (
                key in spec.space
                or key in spec.scheduler.mutations
                or (key == SEED_KEY and spec.repeats > 1)
            ):
                owner = "space" if key in spec.space else "repeats"
                owner = "scheduler.mutations" if key in spec.scheduler.mutations else owner
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


def _pbt_problems(spec: StudySpec, base: TrialConfig) -> list[str]:
    """What population-based training cannot run (see sections.SchedulerSpec)."""
    sched = spec.scheduler
    if sched.name != "pbt":
        return [
            "scheduler.mutations: only scheduler.name pbt explores; remove it or use pbt"
        ] if sched.mutations else []  # fmt: skip
    problems = []
    if not sched.mutations:
        problems.append(
            "scheduler.mutations: PBT needs a key to explore, e.g. "
            "optim.lr: {type: float, low: 0.001, high: 0.3, log: true}"
        )
    if spec.search.algorithm == "optuna":
        problems.append(
            "search.algorithm = 'optuna': PBT explores by itself; use random (search.samples "
            "draws make the population) or grid"
        )
    if sched.max_epochs is not None:
        problems.append("scheduler.max_epochs: ASHA's; PBT trains every trial base.epochs")
    if sched.perturbation_interval >= base.epochs:
        problems.append(
            f"scheduler.perturbation_interval = {sched.perturbation_interval}: trials run "
            f"base.epochs = {base.epochs}, so PBT would never perturb; use fewer epochs"
        )
    if "optim.lr" in sched.mutations and base.schedule.name != "constant":
        problems.append(
            f"base.schedule.name = {base.schedule.name!r}: PBT changes optim.lr itself (its "
            "schedule is what it finds); use constant, or leave optim.lr out of the mutations"
        )
    if "epochs" in spec.space or any("epochs" in v for v in spec.variants.values()):
        problems.append(
            "space.epochs: the population steps together, so every trial trains base.epochs; "
            "set epochs in base only"
        )
    for key in sched.mutations:
        if key in spec.space:
            problems.append(
                f"space.{key}: PBT draws its first values from scheduler.mutations.{key}; "
                "remove it from space"
            )
    if trial_count(spec) < 2:
        problems.append(
            "search.samples: PBT needs a population of at least 2 trials (samples x grid)"
        )
    return problems


def _budget_problems(spec: StudySpec) -> list[str]:
    """A budget that could never be reached (see sections.BudgetSpec)."""
    budget = spec.budget
    problems: list[str] = []
    if budget is None:
        return problems
    for metric in budget.target or {}:
        if metric not in METRIC_MODES or metric.startswith("test/"):
            recorded = [k for k in METRIC_MODES if not k.startswith("test/")]
            problems.append(
                f"budget.target.{metric}: not a metric the study records and may select on; "
                f"use one of {', '.join(recorded)}"
            )
    if budget.gpu_hours is not None and spec.resources.gpus == 0:
        problems.append(
            "budget.gpu_hours: the trials hold no GPU (resources.gpus = 0), so it would never "
            "be reached; use cpu_hours or wall"
        )
    return problems


def _probes(spec: StudySpec) -> list[tuple[str, dict[str, Any]]]:
    """(where, sample) for every variant, grid value and distribution bound of `spec`."""
    checks = [(f"variants.{name}", {VARIANT_KEY: name}) for name in spec.variants]
    for key, dim in spec.space.items():
        checks += [(f"space.{key}", {key: value}) for value in probe_values(dim)]
    for key, dim in spec.scheduler.mutations.items():
        checks += [(f"scheduler.mutations.{key}", {key: v}) for v in probe_values(dim)]
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
        raise ConfigError(
            describe_validation_error(exc, StudySpec, nested={"base": TrialConfig})
        ) from None
    base = _validate_against_config(spec)
    _check_study(spec, base)
    return spec


# Spec keys earlier versions wrote that mean nothing now: dropped from a stored spec (a resumed
# or replayed study of that version) before it is validated.
RETIRED_SPEC_KEYS = ("checkpoint.keep",)


def build_stored_spec(tree: Mapping[str, Any], overrides: Iterable[str] = ()) -> StudySpec:
    """A spec a results directory holds, validated like a new one, without RETIRED_SPEC_KEYS."""
    current = json.loads(json.dumps(tree, default=str))
    for key in RETIRED_SPEC_KEYS:
        *sections, last = key.split(".")
        node = current
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return build_spec(current, overrides)


def load_spec(path: Path, overrides: Iterable[str] = ()) -> StudySpec:
    """Read, merge ``--set`` overrides into, and fully validate the study spec at `path`."""
    return build_spec(read_yaml(path), overrides)
