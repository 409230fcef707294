"""A study's results directory read back with pandas only (no Ray, no GPU, no torch)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cifartune.config.spec import metric_mode
from cifartune.errors import StudyDirError
from cifartune.storage import Location
from cifartune.store.columns import (
    CONFIG_PREFIX,
    ENDED_AT,
    ENGINE_METRICS,
    STARTED_AT,
    TRIAL_COLUMNS,
)
from cifartune.store.directory import StudyDirectory
from cifartune.store.epochs import EpochReader
from cifartune.store.layout import STUDY_FILE, TEST_FILE
from cifartune.store.lineage import read_lineage
from cifartune.store.summary import SUMMARY_INPUTS, in_force_at_best, resummarize
from cifartune.store.tables import as_timestamps, read_optional_table
from cifartune.store.trial_states import read_trial_rows


@dataclass(frozen=True)
class StudyData:
    """Everything a study wrote, read back with pandas only (no Ray, no GPU). Under
    population-based training a trial's ``config/*`` are the values in force at its best
    epoch (:func:`~cifartune.store.summary.in_force_at_best`): every view labels a member by
    what trained its best model."""

    directory: Location
    meta: dict[str, Any]
    spec: dict[str, Any]
    epochs: pd.DataFrame
    trials: pd.DataFrame
    test: pd.DataFrame
    lineage: pd.DataFrame = field(default_factory=pd.DataFrame)  # PBT's exploits (store.lineage)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.directory.name))

    @property
    def metric(self) -> str:
        return str(self.spec.get("metric", "val/top1"))

    @property
    def mode(self) -> str:
        return metric_mode(self.metric, self.spec.get("mode"))

    @functools.cached_property
    def factor_keys(self) -> tuple[str, ...]:
        """Config columns of the spec's search space that vary across trials (the variants,
        which change several keys at once, are the ``variant`` column instead). Cached: a
        report labels every trial with them."""
        space = self.spec.get("space") or {}
        # A PBT member's mutated keys too, with the values in force at its best epoch.
        mutations = (self.spec.get("scheduler") or {}).get("mutations") or {}
        keys = [
            CONFIG_PREFIX + k for k in {**space, **mutations} if CONFIG_PREFIX + k in self.trials
        ]
        return tuple(k for k in keys if self.trials[k].astype(str).nunique() > 1)

    @property
    def pbt(self) -> bool:
        """Population-based training: a member's hyperparameters change as it trains."""
        return (self.spec.get("scheduler") or {}).get("name") == "pbt"

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


def status_columns(spec: Mapping[str, Any]) -> list[str]:
    """The epoch columns `status` reads (of a study's spec tree): what the trial summaries,
    the budget and the running trials' lines need, not the 70-odd columns a report reads."""
    metric = str(spec.get("metric", "val/top1"))
    target = list(((spec.get("budget") or {}).get("target")) or {})
    mutations = ((spec.get("scheduler") or {}).get("mutations")) or {}
    keys = ["study", "group", "variant", "seed", *SUMMARY_INPUTS, metric, ENDED_AT, *target]
    return list(dict.fromkeys([*keys, *(CONFIG_PREFIX + k for k in mutations)]))


def read_study(
    where: Path | str | Location,
    reader: EpochReader | None = None,
    epoch_columns: Callable[[Mapping[str, Any]], Sequence[str]] | None = None,
) -> StudyData:
    """Load a study results directory (a path or URI), or raise StudyDirError saying what is
    missing. `reader` keeps the epoch files it read, for a caller that reads the study again
    (they never change: only new files are read). `epoch_columns` (of the spec tree, e.g.
    :func:`status_columns`) reads only those epoch columns."""
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
    spec = StudyDirectory(directory).spec_tree()
    # The trial table first: epochs read after it are at least as new as its states.
    trials = read_trial_rows(directory)
    columns = None if epoch_columns is None else epoch_columns(spec)
    epochs = (reader or EpochReader()).study_frame(directory, columns)
    if epochs.empty:  # a study that has not reported yet still has the columns readers use
        epochs = pd.DataFrame(columns=["trial_id", "group", "variant", "seed", *ENGINE_METRICS])
    epochs = epochs.sort_values(["trial_id", "epoch"], ignore_index=True)
    as_timestamps(epochs, ENDED_AT)  # results of older versions hold Unix seconds
    if trials.empty:
        trials = pd.DataFrame(columns=TRIAL_COLUMNS)
    else:
        resources = spec.get("resources") or {}
        metric = str(spec.get("metric", "val/top1"))
        trials = resummarize(
            trials,
            epochs,
            metric,
            metric_mode(metric, spec.get("mode")),
            float(resources.get("cpus", 1)),
            float(resources.get("gpus", 0)),
        )
        mutations = ((spec.get("scheduler") or {}).get("mutations")) or {}
        trials = in_force_at_best(trials, epochs, [CONFIG_PREFIX + k for k in mutations])
    as_timestamps(trials, STARTED_AT)
    test = read_optional_table(directory / TEST_FILE)
    return StudyData(directory, meta, spec, epochs, trials, test, read_lineage(directory))
