"""The columns of a study's tables: one row per trial-epoch, its identifying keys (study, trial,
configuration group, variant, seed), the metrics, ``config/*`` for what was asked and
``effective/*`` for what ran.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

CONFIG_PREFIX = "config/"
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
    trial_id: str, flat_config: Mapping[str, Any], sample: Mapping[str, Any], *, study: str
) -> dict:
    """The identifying columns of a trial's rows: study, id, configuration group, variant (null
    in a study without variants), seed. ``study`` keeps rows apart when several studies' files
    are read as one table."""
    return {
        "study": study,
        "trial_id": trial_id,
        "group": group_id(flat_config),
        "variant": sample.get("variant"),
        "seed": flat_config["seed"],
    }


# The epoch columns a trial's summary reads (beside ``effective/*`` and the study's metric).
SUMMARY_COLUMNS = frozenset(
    {"epoch", "val/top1", "train/top1", "time/epoch_s", "time/cpu_s", "diverged"}
)


def summary_column(name: str, metric: str) -> bool:
    return name in SUMMARY_COLUMNS or name == metric or name.startswith(EFFECTIVE_PREFIX)
