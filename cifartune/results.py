"""Tidy Parquet results: one row per trial-epoch, ``config/*`` columns beside the metrics.

Files are replaced whole (see :mod:`cifartune.storage`: a local directory or an object store),
so a reader never sees a half-written file and a crash loses at most the epoch in flight.
Readers need only pandas/pyarrow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


def epoch_rows(
    history: Iterable[Mapping[str, Any]], flat_config: Mapping[str, Any], **keys: Any
) -> pd.DataFrame:
    """Metrics per epoch, plus identifying `keys` and the flat config as ``config/<key>``."""
    frame = pd.DataFrame(list(history))
    for name, value in keys.items():
        frame[name] = value
    for name, value in flat_config.items():
        frame[CONFIG_PREFIX + name] = _scalar(value)
    leading = [*keys, "epoch"]
    return frame[leading + [c for c in frame.columns if c not in leading]]


def _scalar(value: Any) -> Any:
    """Parquet columns need one type; lists (e.g. an augmentation tuple) become 'a+b' strings."""
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
    "time/train_s", "time/epoch_s", "time/images_per_s", "time/ended_at", "diverged", "node_id",
    "init/loss", "init/top1", "init/top5", "pid",
)  # fmt: skip
TRIAL_COLUMNS = (
    "trial_id", "group", "variant", "seed", "state", "error", "retries", "max_epochs",
    "epochs_run", "best_epoch", "best_metric", "final_val_top1", "final_train_top1", "time_s",
    "stop_reason", "cpu_s", "gpu_s", "started_at",
)  # fmt: skip
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


def trial_keys(trial_id: str, flat_config: Mapping[str, Any], sample: Mapping[str, Any]) -> dict:
    """The identifying columns of a trial's rows: id, configuration group, variant, seed."""
    return {
        "trial_id": trial_id,
        "group": group_id(flat_config),
        "variant": sample.get("variant", ""),
        "seed": flat_config["seed"],
    }


class StudyRecorder:
    """The trial table (``trials.parquet``) from Ray's trial events and the trials' own epoch
    files (written by the trials, see :mod:`cifartune.trial_store`); holds no Ray objects.

    What it knows of earlier drivers (finished trials, retries) is read back from the results
    directory when it is built, so a resumed study continues from the files, not from the copy
    of this object that Ray pickled when the study first started.
    """

    def __init__(
        self,
        directory: Path | Location,
        resolve: Any,
        metric: str,
        mode: str,
        cpus: float,
        gpus: float,
    ):
        self.directory = directory = Location.of(directory)
        self.resolve = resolve  # sample -> flat trial config (dict)
        self.metric, self.mode = metric, mode
        self.cpus, self.gpus = cpus, gpus
        self._epochs: dict[str, tuple[tuple[int, int], pd.DataFrame]] = {}
        self._states: dict[str, tuple[str, dict[str, Any], str | None]] = {}
        self._retries: dict[str, int] = {}
        self._started: dict[str, float] = {}  # wall clock when Ray last started the trial
        # Ray marks trials it stops at an interrupt TERMINATED too; only trials it reported as
        # complete (here or before a resume, per the trial table) are finished.
        self._finished: set[str] = set()
        previous = read_optional_table(directory / TRIALS_FILE)
        if not previous.empty:
            self._finished = set(previous.loc[previous["state"] == "TERMINATED", "trial_id"])
            self._retries = dict(zip(previous["trial_id"], previous["retries"], strict=True))
            if "started_at" in previous:
                started = previous.dropna(subset=["started_at"])
                self._started = dict(zip(started["trial_id"], started["started_at"], strict=True))

    def trial_epochs(self, trial_id: str) -> pd.DataFrame:
        """The trial's epoch rows as its process last wrote them (re-read when they change)."""
        path = self.directory / EPOCHS_DIR / f"{trial_id}.parquet"
        stamp = path.stamp()
        if stamp is None:
            return pd.DataFrame()
        cached = self._epochs.get(trial_id)
        if cached is None or cached[0] != stamp:
            cached = (stamp, read_table(path))
            self._epochs[trial_id] = cached
        return cached[1]

    def record_retry(self, trial_id: str, error: str | None) -> None:
        self._retries[trial_id] = self._retries.get(trial_id, 0) + 1
        log.warning("trial %s failed and is retried from its last checkpoint: %s", trial_id, error)

    def record_start(self, trial_id: str) -> None:
        self._started[trial_id] = time.time()

    def record_complete(self, trial_id: str) -> None:
        self._finished.add(trial_id)

    def record_states(
        self, states: Mapping[str, tuple[str, dict[str, Any], str | None]]
    ) -> pd.DataFrame:
        """Update the trial table from Ray's view of every trial; return it as written."""
        for trial_id, (state, sample, error) in states.items():
            if state == "TERMINATED" and trial_id not in self._finished:
                state = "INTERRUPTED"
            self._states[trial_id] = (state, sample, error)
        table = self.trial_table()
        write_table(table, self.directory / TRIALS_FILE)
        return table

    def trial_table(self) -> pd.DataFrame:
        rows = [self._trial_row(tid, *state) for tid, state in self._states.items()]
        return pd.DataFrame(rows)

    def _trial_row(
        self, trial_id: str, state: str, sample: dict[str, Any], error: str | None
    ) -> dict[str, Any]:
        flat = self.resolve(sample)
        epochs = self.trial_epochs(trial_id)
        row: dict[str, Any] = {
            **trial_keys(trial_id, flat, sample),
            "state": state,
            "error": error,
            "retries": self._retries.get(trial_id, 0),
            "max_epochs": flat["epochs"],
            "started_at": self._started.get(trial_id),
        }
        row.update(summarize_epochs(epochs, self.metric, self.mode, flat["epochs"], state))
        row["cpu_s"] = row["time_s"] * self.cpus
        row["gpu_s"] = row["time_s"] * self.gpus
        row.update({CONFIG_PREFIX + k: _scalar(v) for k, v in flat.items()})
        return row


def summarize_epochs(
    epochs: pd.DataFrame, metric: str, mode: str, planned: int, state: str
) -> dict[str, Any]:
    """Per-trial summary: epochs run, best epoch and value of `metric`, stop reason, time."""
    run = len(epochs)
    summary: dict[str, Any] = {
        "epochs_run": run,
        "best_epoch": None,
        "best_metric": None,
        "final_val_top1": None,
        "final_train_top1": None,
        "time_s": 0.0,
    }
    if run:
        values = pd.to_numeric(epochs[metric], errors="coerce")
        best = values.idxmax() if mode == "max" else values.idxmin()
        if pd.notna(best):
            summary["best_epoch"] = int(epochs.loc[best, "epoch"])
            summary["best_metric"] = float(values[best])
        last = epochs.iloc[-1]
        summary["final_val_top1"] = float(last["val/top1"])
        summary["final_train_top1"] = float(last["train/top1"])
        summary["time_s"] = float(epochs["time/epoch_s"].sum())
    diverged = bool(run and epochs.iloc[-1].get("diverged", False))
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
        mode = self.spec.get("mode")
        if mode:
            return str(mode)
        return "min" if self.metric.endswith("loss") else "max"

    def factor_keys(self) -> list[str]:
        """Config columns of the spec's search space that vary across trials (the variants,
        which change several keys at once, are the ``variant`` column instead)."""
        space = self.spec.get("space") or {}
        keys = [CONFIG_PREFIX + k for k in space if CONFIG_PREFIX + k in self.trials]
        return [k for k in keys if self.trials[k].astype(str).nunique() > 1]

    def has_variants(self) -> bool:
        return bool(self.spec.get("variants")) and "variant" in self.trials


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
    epochs = read_parquet_dir(directory / EPOCHS_DIR)
    if epochs.empty:  # a study that has not reported yet still has the columns readers use
        epochs = pd.DataFrame(columns=["trial_id", "group", "variant", "seed", *ENGINE_METRICS])
    epochs = epochs.sort_values(["trial_id", "epoch"], ignore_index=True)
    trials = read_optional_table(directory / TRIALS_FILE)
    if trials.empty:
        trials = pd.DataFrame(columns=TRIAL_COLUMNS)
    test = read_optional_table(directory / TEST_FILE)
    return StudyData(directory, meta, spec or {}, epochs, trials, test)
