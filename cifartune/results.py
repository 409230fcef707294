"""Tidy Parquet results: one row per trial-epoch, ``config/*`` columns beside the metrics.

Files are replaced whole (see :mod:`cifartune.storage`: a local directory or an object store),
so a reader never sees a half-written file and a crash loses at most the epochs in flight
(see :mod:`cifartune.trial_store`).
Readers need only pandas/pyarrow.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StudyDirError
from .storage import Location

log = logging.getLogger(__name__)
CONFIG_PREFIX = "config/"


def atomic_write_bytes(path: Path | Location, payload: bytes) -> None:
    Location.of(path).write_bytes(payload)


def atomic_write_text(path: Path | Location, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_table(frame: pd.DataFrame, path: Path | Location) -> None:
    """Write `frame` as one Parquet file, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_table(path: Path | Location) -> pd.DataFrame:
    return pd.read_parquet(Location.of(path).open_for_reading())


def read_optional_table(path: Path | Location) -> pd.DataFrame:
    location = Location.of(path)
    return read_table(location) if location.is_file() else pd.DataFrame()


def epoch_records(
    history: Iterable[Mapping[str, Any]], flat_config: Mapping[str, Any], **keys: Any
) -> list[dict[str, Any]]:
    """Metrics per epoch, plus identifying `keys` and the flat config as ``config/<key>``, as
    plain rows (:func:`write_records` writes them)."""
    config = {CONFIG_PREFIX + name: _scalar(value) for name, value in flat_config.items()}
    return [{**keys, "epoch": m["epoch"], **m, **config} for m in history]


def write_records(records: Sequence[Mapping[str, Any]], path: Path | Location) -> None:
    """Write rows (dicts; a key missing from a row is null there) as one Parquet file,
    atomically, with ``time/ended_at`` as a UTC timestamp. Built with pyarrow alone: a trial
    writes its epoch file once per epoch, and a pandas frame per write cost more than a small
    trial's epoch."""
    names = list(dict.fromkeys(name for record in records for name in record))
    columns = {}
    for name in names:
        values = [record.get(name) for record in records]
        if name == ENDED_AT:
            columns[name] = pa.array([_nanoseconds(v) for v in values], _UTC_NS)
        else:
            columns[name] = pa.array(values, from_pandas=True)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


_UTC_NS = pa.timestamp("ns", tz="UTC")


def _nanoseconds(value: Any) -> int | None:
    """Unix seconds as measured, or a timestamp read back from a file, as ns since the epoch."""
    if _missing(value):
        return None
    if isinstance(value, datetime):
        return int(pd.Timestamp(value).value)
    return round(float(value) * 1e9)


def as_timestamps(frame: pd.DataFrame, column: str) -> None:
    """Unix seconds (as measured, or as results before this version stored them) become UTC
    timestamps, Parquet's own type: readable as dates in pandas, duckdb and polars alike."""
    if column not in frame or isinstance(frame[column].dtype, pd.DatetimeTZDtype):
        return
    values = frame[column]
    if pd.api.types.is_datetime64_any_dtype(values):
        frame[column] = values.dt.tz_localize("UTC")
    else:
        seconds = pd.to_numeric(values, errors="coerce").astype("float64")
        frame[column] = pd.to_datetime(seconds, unit="s", utc=True)


def seconds_between(later: pd.Series, earlier: pd.Series) -> pd.Series:
    """Seconds from `earlier` to `later` (timestamps)."""
    return (later - earlier).dt.total_seconds()


def _scalar(value: Any) -> Any:
    """Parquet columns need one type; lists (an augmentation tuple) become 'a+b' strings, as
    the config files write them (``none`` for no augmentation)."""
    if isinstance(value, list | tuple):
        return "+".join(map(str, value)) or "none"
    return value


def read_parquet_dir(directory: Path | Location) -> pd.DataFrame:
    """All ``*.parquet`` files in `directory` (skipping temporaries) as one frame."""
    files = sorted(Location.of(directory).files(".parquet"), key=lambda f: f.name)
    if not files:
        return pd.DataFrame()
    return pd.concat([read_table(f) for f in files], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Study results directory:
#   study.json          metadata: spec hash, versions, hardware, start/end, state
#   spec.yaml           the resolved spec
#   epochs/<trial>.parquet   one row per finished epoch of that trial (written by the trial)
#   checkpoints/<trial>/     latest.pt and best.pt of that trial (written by the trial)
#   trials.parquet      one row per trial: config, state, stop reason, best epoch, compute
#   test.parquet        test-set scores of the best configurations, after the search
#   ray/                Ray Tune's experiment state (trial list, searcher, scheduler)

STUDY_FILE = "study.json"
SPEC_FILE = "spec.yaml"
EPOCHS_DIR = "epochs"
TRIALS_FILE = "trials.parquet"
TEST_FILE = "test.parquet"
RAY_DIR = "ray"
LOCK_FILE = ".lock"
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
# Keys that vary between repeats of one configuration, or only say where it ran or where its
# data lives (a study resumed elsewhere keeps its groups).
NOT_CONFIGURATION = ("seed", "threads", "device", "data.dir", "data.download")


def group_id(flat_config: Mapping[str, Any]) -> str:
    """Same id for the repeats (seeds) of one configuration."""
    import hashlib

    identity = {k: _scalar(v) for k, v in sorted(flat_config.items()) if k not in NOT_CONFIGURATION}
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


def read_records(path: Path | Location, keep: Callable[[str], bool] | None = None) -> list[dict]:
    """A Parquet file's rows as dicts, only its columns that `keep` accepts (all without it).
    pyarrow alone, through one ParquetFile: the driver reads a trial's epoch file at each of
    its results, and pandas' reader cost several times more than this for files this small."""
    source = pq.ParquetFile(pa.BufferReader(Location.of(path).read_bytes()))
    names = None if keep is None else [n for n in source.schema_arrow.names if keep(n)]
    return list(source.read(columns=names).to_pylist())


# The epoch columns a trial's summary reads (beside ``effective/*`` and the study's metric).
SUMMARY_COLUMNS = frozenset(
    {"epoch", "val/top1", "train/top1", "time/epoch_s", "time/cpu_s", "diverged"}
)


def summary_column(name: str, metric: str) -> bool:
    return name in SUMMARY_COLUMNS or name == metric or name.startswith(EFFECTIVE_PREFIX)


def metric_value(value: Any) -> float:
    """A metric as a float; NaN where it is missing or not a number."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _missing(value: Any) -> bool:
    """Whether a row's value is missing: None (pyarrow's null), or NaN (a pandas frame's)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _flag(value: Any) -> bool:
    """A boolean column's value; missing is False."""
    return not _missing(value) and bool(value)


def summarize_epochs(
    epochs: Sequence[Mapping[str, Any]], metric: str, mode: str, planned: int, state: str
) -> dict[str, Any]:
    """Per-trial summary of its epoch rows (in epoch order): epochs run, best epoch and value
    of `metric` (the first best; NaN never is), stop reason, time."""
    run = len(epochs)
    summary: dict[str, Any] = {
        "epochs_run": run,
        "best_epoch": None,
        "best_metric": None,
        "final_val_top1": None,
        "final_train_top1": None,
        "time_s": 0.0,
        "cpu_s": None,  # measured, where the epochs measured it
    }
    if run:
        for row in epochs:
            value = metric_value(row.get(metric))
            best = summary["best_metric"]
            if not math.isnan(value) and (
                best is None or (value > best if mode == "max" else value < best)
            ):
                summary["best_epoch"], summary["best_metric"] = int(row["epoch"]), value
        last = epochs[-1]
        summary["final_val_top1"] = metric_value(last.get("val/top1"))
        summary["final_train_top1"] = metric_value(last.get("train/top1"))
        times = [metric_value(row.get("time/epoch_s")) for row in epochs]
        summary["time_s"] = math.fsum(t for t in times if not math.isnan(t))
        cpu = [metric_value(row.get("time/cpu_s")) for row in epochs]
        if not any(math.isnan(c) for c in cpu):
            summary["cpu_s"] = math.fsum(cpu)
    diverged = bool(run and _flag(epochs[-1].get("diverged")))
    if state == "ERROR":
        reason = "error"
    elif diverged:
        reason = "diverged"
    elif state == "TERMINATED":
        reason = "completed" if run >= planned else "early-stopped"
    else:
        reason = state.lower()
    summary["stop_reason"] = reason
    return summary


def reserved(seconds: float, cpus: float, gpus: float) -> dict[str, float]:
    """CPU and GPU seconds a trial held (its resources for its epochs' time), not used."""
    return {"reserved_cpu_s": seconds * cpus, "reserved_gpu_s": seconds * gpus}


def epochs_by_trial(epochs: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Each trial's epoch rows (as dicts, in the frame's order)."""
    if epochs.empty:
        return {}
    return {str(t): rows.to_dict("records") for t, rows in epochs.groupby("trial_id", sort=False)}


def resummarize(
    trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, mode: str, cpus: float, gpus: float
) -> pd.DataFrame:
    """The trial table with every per-trial summary recomputed from the epoch rows (sorted by
    trial and epoch), the truth: the table on disk may lag behind them (the driver rewrites it
    at a bounded rate, or died before its last write), and a view must agree with itself."""
    if trials.empty:
        return trials
    by_trial = epochs_by_trial(epochs)
    rows = []
    for row in trials.to_dict("records"):
        mine = by_trial.get(row["trial_id"], [])
        row.update(summarize_epochs(mine, metric, mode, int(row["max_epochs"]), row["state"]))
        row.update(reserved(row["time_s"], cpus, gpus))
        row.pop("gpu_s", None)  # older versions' name for reserved_gpu_s
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class StudyData:
    """Everything a study wrote, read back with pandas only (no Ray, no GPU)."""

    directory: Location
    meta: dict[str, Any]
    spec: dict[str, Any]
    epochs: pd.DataFrame
    trials: pd.DataFrame
    test: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.directory.name))

    @property
    def metric(self) -> str:
        return str(self.spec.get("metric", "val/top1"))

    @property
    def mode(self) -> str:
        return _mode(self.spec)

    def factor_keys(self) -> list[str]:
        """Config columns of the spec's search space that vary across trials (the variants,
        which change several keys at once, are the ``variant`` column instead)."""
        space = self.spec.get("space") or {}
        keys = [CONFIG_PREFIX + k for k in space if CONFIG_PREFIX + k in self.trials]
        return [k for k in keys if self.trials[k].astype(str).nunique() > 1]

    def has_variants(self) -> bool:
        return bool(self.spec.get("variants")) and "variant" in self.trials

    def driver_gone(self) -> StudyData:
        """The study as its dead driver left it: trials it had running or queued are
        interrupted (resumed later), not running."""
        live = self.trials["state"].isin(["RUNNING", "PENDING", "PAUSED"])
        if not live.any():
            return self
        trials = self.trials.copy()
        trials.loc[live, ["state", "stop_reason"]] = ["INTERRUPTED", "interrupted"]
        return replace(self, trials=trials)


def _mode(spec: Mapping[str, Any]) -> str:
    if spec.get("mode"):
        return str(spec["mode"])
    return "min" if str(spec.get("metric", "val/top1")).endswith("loss") else "max"


def read_study(where: Path | str | Location) -> StudyData:
    """Load a study results directory (a path or URI), or raise StudyDirError saying what is
    missing."""
    import yaml

    directory = Location.of(where)
    meta_path = directory / STUDY_FILE
    if not meta_path.is_file():
        if not directory.is_dir():
            raise StudyDirError(f"{directory}: no such directory")
        raise StudyDirError(
            f"{directory}: not a cifartune study results directory (no {STUDY_FILE}); "
            "pass the directory `cifartune run` printed, e.g. results/<study name>"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise StudyDirError(f"{meta_path}: unreadable ({exc})") from None
    spec_path = directory / SPEC_FILE
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else {}
    # The trial table first: epochs read after it are at least as new as its states.
    trials = read_optional_table(directory / TRIALS_FILE)
    epochs = read_parquet_dir(directory / EPOCHS_DIR)
    if epochs.empty:  # a study that has not reported yet still has the columns readers use
        epochs = pd.DataFrame(columns=["trial_id", "group", "variant", "seed", *ENGINE_METRICS])
    epochs = epochs.sort_values(["trial_id", "epoch"], ignore_index=True)
    as_timestamps(epochs, ENDED_AT)  # results of older versions hold Unix seconds
    if trials.empty:
        trials = pd.DataFrame(columns=TRIAL_COLUMNS)
    else:
        resources = (spec or {}).get("resources") or {}
        trials = resummarize(
            trials,
            epochs,
            str((spec or {}).get("metric", "val/top1")),
            _mode(spec or {}),
            float(resources.get("cpus", 1)),
            float(resources.get("gpus", 0)),
        )
    as_timestamps(trials, STARTED_AT)
    test = read_optional_table(directory / TEST_FILE)
    return StudyData(directory, meta, spec or {}, epochs, trials, test)
