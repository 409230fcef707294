"""The trial table, kept by the driver from Ray's trial events and the trials' own epoch files
(written by the trials, see :mod:`cifartune.store.trial_writer`).

A trial's row is written (a file of its own, see :mod:`cifartune.store.trial_states`) when its
state changes: Ray's state, its retries, its error. Work per event does not grow with the
study: an event re-summarizes the one trial it is about (plus, every ``SCAN_EVERY_S`` seconds,
any trial whose Ray state changed: a dictionary lookup per trial to notice), reading only the
epoch files it has not read yet. What a resume needs is in the files: a finished trial is
marked at once in ``finished/`` (one empty file), a trial that failed for good has its
``failed.txt``, and the epoch files are the truth of its progress
(:func:`cifartune.store.study_data.read_study` re-summarizes every trial from them).
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
from cifartune.store.budget import read_reached
from cifartune.store.checkpoints import finished_trials, read_failure, record_finished
from cifartune.store.columns import (
    CONFIG_PREFIX,
    EFFECTIVE_PREFIX,
    STARTED_AT,
    column_value,
    summary_column,
    trial_keys,
)
from cifartune.store.epochs import epoch_files, trial_epochs_dir
from cifartune.store.snapshot import EPOCHS, snapshot_of_trial
from cifartune.store.summary import reserved, summarize_epochs
from cifartune.store.tables import as_timestamps, read_records
from cifartune.store.trial_states import SEQ, read_trial_rows, write_trial_row

log = logging.getLogger(__name__)
# Seconds between two looks at every trial's Ray state (each change has an event of its own
# too; the look catches what Ray changes without one).
SCAN_EVERY_S = 5.0
# The columns of a trial row whose change is written (the rest follow the epochs).
STATE_KEY = ("state", "error", "retries", STARTED_AT)


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
        group_by_trial: bool = False,
    ):
        self.directory = directory = Location.of(directory)
        self.resolve = resolve  # sample -> flat trial config (dict)
        self.metric, self.mode = metric, mode
        self.cpus, self.gpus = cpus, gpus
        self.clock = clock
        self.group_by_trial = group_by_trial  # PBT: a trial's configuration changes
        self._rows: dict[str, dict[str, Any]] = {}
        self._ray_states: dict[str, str] = {}  # as last seen: a trial is redone when it changes
        self._flat: dict[str, dict[str, Any]] = {}
        # Each trial's epoch rows read so far: epoch -> (file name, summary columns).
        self._epochs: dict[str, dict[int, tuple[str, dict[str, Any]]]] = {}
        self._retries: dict[str, int] = {}
        self._started: dict[str, float] = {}  # wall clock when Ray last started the trial
        # Each trial's last written row's state key, and that row's sequence number.
        self._written: dict[str, tuple[tuple[Any, ...], int]] = {}
        self._scanned_at = -float("inf")
        self._spent = False  # budget.json seen
        self.reads = 0  # epoch files read, for the tests and the overhead benchmark
        self.writes = 0  # trial rows written
        # Ray marks trials it stops at an interrupt TERMINATED too; only trials it reported as
        # complete (here or before a resume, per the trial rows) are finished.
        self._finished = finished_trials(directory)
        previous = read_trial_rows(directory)
        if not previous.empty:
            self._finished |= set(previous.loc[previous["state"] == "TERMINATED", "trial_id"])
            self._retries = dict(zip(previous["trial_id"], previous["retries"], strict=True))
            seqs = previous[SEQ] if SEQ in previous else [0] * len(previous)
            self._written = {
                t: ((), int(seq)) for t, seq in zip(previous["trial_id"], seqs, strict=True)
            }
            if STARTED_AT in previous:
                as_timestamps(previous, STARTED_AT)
                started = previous.dropna(subset=[STARTED_AT])
                seconds = [t.timestamp() for t in started[STARTED_AT]]
                self._started = dict(zip(started["trial_id"], seconds, strict=True))

    def _summary_column(self, name: str) -> bool:
        # A PBT member's values in force too: the mirror names those at its best epoch.
        pbt_value = self.group_by_trial and name.startswith(CONFIG_PREFIX)
        return summary_column(name, self.metric) or pbt_value

    def trial_epochs(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's epoch rows in epoch order, the columns its summary and the Optuna mirror
        use: one listing of its folder, and a read of each file not read before (they never
        change; a withdrawn one is dropped). A finished trial's files are committed to the
        study's table and deleted: its rows are read from there once."""
        files = epoch_files(trial_epochs_dir(self.directory, trial_id))
        cached = self._epochs.setdefault(trial_id, {})
        if not files and trial_id in self._finished:
            if not cached:
                committed = snapshot_of_trial(self.directory, EPOCHS, trial_id).to_pylist()
                rows = [{k: v for k, v in r.items() if self._summary_column(k)} for r in committed]
                cached.update({int(r["epoch"]): ("", r) for r in rows})
            return [row for _, (_, row) in sorted(cached.items())]
        for epoch in set(cached) - set(files):
            del cached[epoch]
        for epoch, file in files.items():
            if epoch in cached and cached[epoch][0] == file.name:
                continue
            try:
                (row,) = read_records(file, self._summary_column)
            except FileNotFoundError:  # withdrawn since the listing (a resume)
                continue
            self.reads += 1
            cached[epoch] = (file.name, row)
        return [row for _, (_, row) in sorted(cached.items())]

    def record_retry(self, trial_id: str, error: str | None) -> None:
        self._retries[trial_id] = self._retries.get(trial_id, 0) + 1
        log.warning("trial %s failed and is retried from its last checkpoint: %s", trial_id, error)

    def record_start(self, trial_id: str) -> None:
        self._started[trial_id] = time.time()

    def record_complete(self, trial_id: str) -> bool:
        """Ray reported the trial complete: finished (and True), unless the budget stopped
        it."""
        if self._budget_spent():
            return False
        self._finished.add(trial_id)
        record_finished(self.directory, trial_id)
        return True

    def scan_due(self) -> bool:
        """Whether every trial's Ray state is due to be looked at (see ``SCAN_EVERY_S``)."""
        return self.clock() - self._scanned_at >= SCAN_EVERY_S

    def needs_update(self, trial_id: str, ray_state: str) -> bool:
        """Whether Ray's state of the trial changed since the last update."""
        return self._ray_states.get(trial_id) != ray_state

    def record_events(
        self, events: Iterable[TrialEvent], touched: str | None = None
    ) -> list[dict[str, Any]]:
        """Bring the table up to date: the `touched` trial (the one the event is about) and every
        trial whose state changed are re-summarized; return the rows that changed."""
        if self.scan_due():
            self._scanned_at = self.clock()
        changed = []
        for event in events:
            if event.trial_id != touched and not self.needs_update(event.trial_id, event.ray_state):
                continue
            self._ray_states[event.trial_id] = event.ray_state
            row = self._trial_row(event, self._state(event))
            self._rows[event.trial_id] = row
            self._write_if_changed(row)
            changed.append(row)
        return changed

    def _write_if_changed(self, row: dict[str, Any]) -> None:
        """The trial's row, as a new file, when its state key differs from the last written."""
        trial_id = row["trial_id"]
        key = tuple(row[k] for k in STATE_KEY)
        last_key, seq = self._written.get(trial_id, ((), 0))
        if key == last_key:
            return
        write_trial_row(self.directory, row, seq + 1)
        self._written[trial_id] = (key, seq + 1)
        self.writes += 1

    def trial_table(self) -> pd.DataFrame:
        return pd.DataFrame(list(self._rows.values()))

    def _state(self, event: TrialEvent) -> str:
        if event.ray_state != "TERMINATED":
            return event.ray_state
        # A trial that returned without a result because it cannot run (a config or data
        # error, recorded by the trial itself) failed for good; a TERMINATED trial Ray did not
        # report complete was stopped by the study's budget, if it is spent, else by an
        # interrupt.
        if read_failure(self.directory, event.trial_id):
            return "ERROR"
        if event.trial_id in self._finished:
            return "TERMINATED"
        return "STOPPED" if self._budget_spent() else "INTERRUPTED"

    def _budget_spent(self) -> bool:
        """Whether budget.json says a limit was reached (it never goes away once written)."""
        if not self._spent:
            self._spent = read_reached(self.directory) is not None
        return self._spent

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
            **trial_keys(
                trial_id,
                flat,
                event.sample,
                study=self.directory.name,
                group=trial_id if self.group_by_trial else None,
            ),
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
