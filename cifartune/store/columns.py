"""The columns of a study's tables: one row per trial-epoch, its identifying keys (study, trial,
configuration group, variant, seed), the metrics, ``config/*`` for what was asked and
``effective/*`` for what ran; and their types, declared once, so that every file of a study
has the same schema (a reader that takes the first file's schema for all, as pyarrow.dataset,
pandas and duckdb do over a glob, reads every file of the study).
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

from cifartune.config.trial import TrialConfig

CONFIG_PREFIX = "config/"
# A population-based training member's starting values, beside the in-force ones (study_data).
START_PREFIX = "start/"
ENGINE_METRICS = (
    "epoch", "lr",
    "train/loss", "train/top1", "train/top5",
    "val/loss", "val/top1", "val/top5",
    "test/loss", "test/top1", "test/top5",
    "time/train_s", "time/epoch_s", "time/images_per_s", "time/cpu_s", "time/ended_at",
    "diverged", "node_id", "init/loss", "init/top1", "init/top5", "pid",
)  # fmt: skip
ENDED_AT = "time/ended_at"
STARTED_AT = "started_at"
TRIAL_COLUMNS = (
    "study", "trial_id", "group", "variant", "seed", "state", "error", "retries", "max_epochs",
    "epochs_run", "best_epoch", "best_metric", "final_val_top1", "final_train_top1", "time_s",
    "stop_reason", "cpu_s", "reserved_cpu_s", "reserved_gpu_s", "started_at",
)  # fmt: skip
# What a trial really ran with, where the config leaves it to the machine (precision auto,
# threads all, momentum by optimizer, validation 10%...): ``effective/<key>`` columns.
EFFECTIVE_PREFIX = "effective/"


def effective_columns(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``effective/<key>`` columns of what a run really ran with (engine.effective)."""
    return {EFFECTIVE_PREFIX + key: value for key, value in settings.items()}


_FLOAT, _INT, _TEXT, _FLAG = pa.float64(), pa.int64(), pa.string(), pa.bool_()
# Microseconds: what Delta tables store, so a row reads the same from a file and the table.
UTC_US = pa.timestamp("us", tz="UTC")
KEY_TYPES = {"study": _TEXT, "trial_id": _TEXT, "group": _TEXT, "variant": _TEXT, "seed": _INT}
METRIC_TYPES: dict[str, pa.DataType] = {
    name: _FLOAT for name in ENGINE_METRICS if name not in ("epoch", "diverged", "node_id", "pid")
} | {"epoch": _INT, "diverged": _FLAG, "node_id": _TEXT, "pid": _INT, ENDED_AT: UTC_US}
EFFECTIVE_TYPES = {
    f"{EFFECTIVE_PREFIX}{key}": kind
    for key, kind in {
        "device": _TEXT,
        "device_name": _TEXT,
        "precision": _TEXT,
        "threads": _INT,
        "optim.momentum": _FLOAT,
        "data.val_size": _INT,
        "data.train_subset": _INT,
    }.items()
}
SUMMARY_TYPES = {
    "state": _TEXT, "error": _TEXT, "retries": _INT, "max_epochs": _INT, "epochs_run": _INT,
    "best_epoch": _INT, "best_metric": _FLOAT, "final_val_top1": _FLOAT,
    "final_train_top1": _FLOAT, "time_s": _FLOAT, "stop_reason": _TEXT, "cpu_s": _FLOAT,
    "reserved_cpu_s": _FLOAT, "reserved_gpu_s": _FLOAT, STARTED_AT: UTC_US,
}  # fmt: skip


def _arrow_type(annotation: Any) -> pa.DataType:
    """The column type of a config field: its type, the one that is not None in an optional,
    text for literals and the augmentation list (written 'crop+flip')."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _arrow_type(next(a for a in get_args(annotation) if a is not type(None)))
    if getattr(annotation, "__metadata__", None):  # Annotated
        return _arrow_type(get_args(annotation)[0])
    simple = {bool: _FLAG, int: _INT, float: _FLOAT}
    return simple.get(annotation, _TEXT) if origin is not Literal else _TEXT


def _field_types(model: type[BaseModel], prefix: str) -> dict[str, pa.DataType]:
    kinds: dict[str, pa.DataType] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            kinds.update(_field_types(annotation, f"{prefix}{name}."))
        else:
            kinds[f"{prefix}{name}"] = _arrow_type(annotation)
    return kinds


@functools.cache
def config_types() -> dict[str, pa.DataType]:
    """Every ``config/<key>`` column, with its type."""
    return _field_types(TrialConfig, CONFIG_PREFIX)


@functools.cache
def epoch_types() -> dict[str, pa.DataType]:
    """Every column of an epoch row, with its type."""
    return {**KEY_TYPES, **METRIC_TYPES, **config_types(), **EFFECTIVE_TYPES}


@functools.cache
def trial_types() -> dict[str, pa.DataType]:
    """Every column of a trial row, with its type."""
    return {**KEY_TYPES, **SUMMARY_TYPES, "seq": _INT, **config_types(), **EFFECTIVE_TYPES}


# Keys that vary between repeats of one configuration, or only say where it ran or where its
# data lives (a study resumed elsewhere keeps its groups).
NOT_CONFIGURATION = ("seed", "threads", "device", "data.dir", "data.download")


def column_value(value: Any) -> Any:
    """Parquet columns need one type; lists (an augmentation tuple) become 'a+b' strings, as
    the config files write them (``none`` for no augmentation)."""
    if isinstance(value, list | tuple):
        return "+".join(map(str, value)) or "none"
    return value


def epoch_records(
    history: Iterable[Mapping[str, Any]], flat_config: Mapping[str, Any], **keys: Any
) -> list[dict[str, Any]]:
    """Metrics per epoch, plus identifying `keys` and the flat config as ``config/<key>``, as
    plain rows (:func:`write_records` writes them)."""
    config = {CONFIG_PREFIX + name: column_value(value) for name, value in flat_config.items()}
    return [{**keys, "epoch": m["epoch"], **m, **config} for m in history]


def group_id(flat_config: Mapping[str, Any]) -> str:
    """Same id for the repeats (seeds) of one configuration."""

    identity = {
        k: column_value(v) for k, v in sorted(flat_config.items()) if k not in NOT_CONFIGURATION
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
        :10
    ]


def trial_keys(
    trial_id: str,
    flat_config: Mapping[str, Any],
    sample: Mapping[str, Any],
    *,
    study: str,
    group: str | None = None,
) -> dict:
    """The identifying columns of a trial's rows: study, id, configuration group (by default
    the same for every repeat of the configuration; a PBT trial, whose configuration changes,
    is its own), variant (null in a study without variants), seed. ``study`` keeps rows apart
    when several studies' files are read as one table."""
    return {
        "study": study,
        "trial_id": trial_id,
        "group": group or group_id(flat_config),
        "variant": sample.get("variant"),
        "seed": flat_config["seed"],
    }


# The epoch columns a trial's summary reads (beside ``effective/*`` and the study's metric).
SUMMARY_COLUMNS = frozenset(
    {"epoch", "val/top1", "train/top1", "time/epoch_s", "time/cpu_s", "diverged"}
)


def summary_column(name: str, metric: str) -> bool:
    return name in SUMMARY_COLUMNS or name == metric or name.startswith(EFFECTIVE_PREFIX)
