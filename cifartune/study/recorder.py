"""The trial table (``trials.parquet``), kept by the driver from Ray's trial events and the
trials' own epoch files (written by the trials, see :mod:`cifartune.trial_store`).

Work per event does not grow with the study: an event re-summarizes the one trial it is about
(plus, when the table is due to be written, any trial whose Ray state changed: a dictionary
lookup per trial to notice), and the table is rewritten at most every ``WRITE_EVERY_S`` seconds
(and when the experiment ends). Nothing a
resume needs waits for that write: a finished trial is marked at once in ``finished/`` (one
empty file), a trial that failed for good has its ``failed.txt``, and the epoch files are the
truth of its progress (:func:`cifartune.results.read_study` re-summarizes every trial from
them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cifartune.storage import Location
from cifartune.store.checkpoints import finished_trials, read_failure, record_finished
from cifartune.store.columns import (
    CONFIG_PREFIX,
    EFFECTIVE_PREFIX,
    STARTED_AT,
    column_value,
    summary_column,
    trial_keys,
)
from cifartune.store.layout import EPOCHS_DIR, TRIALS_FILE
from cifartune.store.summary import reserved, summarize_epochs
from cifartune.store.tables import as_timestamps, read_optional_table, read_records, write_table

log = logging.getLogger(__name__)
# Seconds between two rewrites of trials.parquet.
WRITE_EVERY_S = 5.0


@dataclass(frozen=True)
class TrialEvent:
    """What the driver knows of one trial from Ray: its state, sampled config, error text
    (read lazily: it is a file read, needed only for errored trials)."""

    trial_id: str
    ray_state: str
    sample: Mapping[str, Any]
    error: Callable[[], str | None] = lambda: None


class StudyRecorder:
    """The trial table from Ray's trial events; holds no Ray objects.

    What it knows of earlier drivers (finished trials, retries, start times, trials that failed
    for good) is read back from the results directory when it is built, so a resumed study
    continues from the files, not from the copy of this object that Ray pickled.
    """

    def __init__(
        self,
        directory: Path | Location,
        resolve: Callable[[Mapping[str, Any]], dict[str, Any]],
        metric: str,
        mode: str,
        cpus: float,
        gpus: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.directory = directory = Location.of(directory)
        self.resolve = resolve  # sample -> flat trial config (dict)
        self.metric, self.mode = metric, mode
        self.cpus, self.gpus = cpus, gpus
        self.clock = clock
        self._rows: dict[str, dict[str, Any]] = {}
        self._ray_states: dict[str, str] = {}  # as last seen: a trial is redone when it changes
        self._flat: dict[str, dict[str, Any]] = {}
        self._epochs: dict[str, tuple[tuple[int, int], list[dict[str, Any]]]] = {}
        self._retries: dict[str, int] = {}
        self._started: dict[str, float] = {}  # wall clock when Ray last started the trial
        # Ray marks trials it stops at an interrupt TERMINATED too; only trials it reported as
        # complete (here or before a resume, per the trial table) are finished.
        self._finished: set[str] = set()
        self._dirty = False
        self._written_at = -float("inf")
        self.reads = 0  # epoch files read, for the tests and the overhead benchmark
        self.writes = 0  # trial-table writes
        self._finished = finished_trials(directory)
        previous = read_optional_table(directory / TRIALS_FILE)
        if not previous.empty:
            self._finished |= set(previous.loc[previous["state"] == "TERMINATED", "trial_id"])
            self._retries = dict(zip(previous["trial_id"], previous["retries"], strict=True))
            if STARTED_AT in previous:
                as_timestamps(previous, STARTED_AT)
                started = previous.dropna(subset=[STARTED_AT])
                seconds = [t.timestamp() for t in started[STARTED_AT]]
                self._started = dict(zip(started["trial_id"], seconds, strict=True))

    def trial_epochs(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's epoch rows as its process last wrote them (re-read when they change),
        the columns its summary and the Optuna mirror use."""
        path = self.directory / EPOCHS_DIR / f"{trial_id}.parquet"
        stamp = path.stamp()
        if stamp is None:
            return []
        cached = self._epochs.get(trial_id)
        if cached is None or cached[0] != stamp:
            self.reads += 1
            rows = read_records(path, lambda name: summary_column(name, self.metric))
            cached = (stamp, sorted(rows, key=lambda row: row["epoch"]))
            self._epochs[trial_id] = cached
        return cached[1]

    def record_retry(self, trial_id: str, error: str | None) -> None:
        self._retries[trial_id] = self._retries.get(trial_id, 0) + 1
        log.warning("trial %s failed and is retried from its last checkpoint: %s", trial_id, error)

    def record_start(self, trial_id: str) -> None:
        self._started[trial_id] = time.time()

    def record_complete(self, trial_id: str) -> None:
        self._finished.add(trial_id)
        record_finished(self.directory, trial_id)

    def write_due(self) -> bool:
        """Whether a change now would rewrite the table (see ``WRITE_EVERY_S``)."""
        return self.clock() - self._written_at >= WRITE_EVERY_S

    def needs_update(self, trial_id: str, ray_state: str) -> bool:
        """Whether Ray's state of the trial changed since the last update."""
        return self._ray_states.get(trial_id) != ray_state

    def record_events(
        self, events: Iterable[TrialEvent], touched: str | None = None
    ) -> list[dict[str, Any]]:
        """Bring the table up to date: the `touched` trial (the one the event is about) and every
        trial whose state changed are re-summarized; return the rows that changed."""
        changed = []
        for event in events:
            if event.trial_id != touched and not self.needs_update(event.trial_id, event.ray_state):
                continue
            self._ray_states[event.trial_id] = event.ray_state
            row = self._trial_row(event, self._state(event))
            self._rows[event.trial_id] = row
            changed.append(row)
        self._dirty |= bool(changed)
        if self._dirty and self.write_due():
            self.flush()
        return changed

    def flush(self) -> None:
        """Write the table if anything changed since the last write."""
        if not self._dirty:
            return
        write_table(self.trial_table(), self.directory / TRIALS_FILE)
        self.writes += 1
        self._dirty, self._written_at = False, self.clock()

    def trial_table(self) -> pd.DataFrame:
        return pd.DataFrame(list(self._rows.values()))

    def _state(self, event: TrialEvent) -> str:
        if event.ray_state != "TERMINATED":
            return event.ray_state
        # A trial that returned without a result because it cannot run (a config or data
        # error, recorded by the trial itself) failed for good; a TERMINATED trial Ray did not
        # report complete was stopped by an interrupt.
        if read_failure(self.directory, event.trial_id):
            return "ERROR"
        return "TERMINATED" if event.trial_id in self._finished else "INTERRUPTED"

    def _trial_row(self, event: TrialEvent, state: str) -> dict[str, Any]:
        trial_id = event.trial_id
        flat = self._flat.get(trial_id)
        if flat is None:
            flat = self._flat[trial_id] = self.resolve(event.sample)
        error = None
        if state == "ERROR":
            error = read_failure(self.directory, trial_id) or event.error()
        started = self._started.get(trial_id)
        row: dict[str, Any] = {
            **trial_keys(trial_id, flat, event.sample, study=self.directory.name),
            "state": state,
            "error": error,
            "retries": self._retries.get(trial_id, 0),
            "max_epochs": flat["epochs"],
            STARTED_AT: None if started is None else pd.Timestamp(started, unit="s", tz="UTC"),
        }
        epochs = self.trial_epochs(trial_id)
        row.update(summarize_epochs(epochs, self.metric, self.mode, flat["epochs"], state))
        row.update(reserved(row["time_s"], self.cpus, self.gpus))
        row.update({CONFIG_PREFIX + k: column_value(v) for k, v in flat.items()})
        if epochs:  # what the trial really ran with, as its first epoch recorded
            row.update({c: v for c, v in epochs[0].items() if c.startswith(EFFECTIVE_PREFIX)})
        return row
