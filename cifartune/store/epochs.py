"""A trial's epoch rows as files that never change once a reader can see them:

    epochs/<trial>/<epoch:05d>-<writer>.parquet

one file per finished epoch, holding that epoch's row, written whole (see
:mod:`cifartune.storage`: a synced temporary file renamed into place on a disk, one request in
an object store) by the trial's process, and never rewritten. A reader of any kind (pandas over
a glob, pyarrow.dataset, duckdb, polars), at any moment, sees whole files, each epoch once, and
rows that only appear; writing epoch 500 costs what writing epoch 1 costs. `writer` is a random
token of the process that wrote the file, so that a path is never used twice. Once the trial
has finished, the driver commits its rows to the study's epochs table and deletes its files
(:mod:`.snapshot`): :class:`EpochReader` reads both.

One exception: a trial resumed from a checkpoint older than its rows (``checkpoint.every`` > 1)
recomputes the epochs after that checkpoint, and first withdraws their rows (and a trial
restarted from scratch, all of its rows): they move to ``withdrawn/epochs/<trial>/``, kept but
out of the results, before the recomputed ones are written. A reader may therefore see the
rows of epochs after a trial's latest checkpoint disappear and come back, never twice at once.

Studies written by older versions hold one file per trial, ``epochs/<trial>.parquet``;
:func:`read_study_epochs` reads them too, and :func:`convert_legacy` splits them once.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from cifartune.storage import Location
from cifartune.store.columns import epoch_types
from cifartune.store.layout import EPOCHS_DIR, WITHDRAWN_DIR
from cifartune.store.snapshot import EPOCHS, SnapshotCache, read_rows, snapshot_of_trial
from cifartune.store.tables import read_arrow, write_rows

log = logging.getLogger(__name__)
EPOCH_FILE = re.compile(r"^(\d+)-([0-9a-f]+)\.parquet$")


def writer_token() -> str:
    """A new writer's token, for the names of the files it writes."""
    return uuid.uuid4().hex[:8]


def trial_epochs_dir(directory: Location, trial_id: str) -> Location:
    """The folder of a study trial's epoch files."""
    return directory / EPOCHS_DIR / trial_id


def epoch_path(folder: Location, epoch: int, writer: str) -> Location:
    return folder / f"{epoch:05d}-{writer}.parquet"


def epoch_of(file: Location) -> int | None:
    """The epoch a file of a trial's folder holds, from its name; None for another file."""
    match = EPOCH_FILE.match(file.name)
    return int(match.group(1)) if match else None


def epoch_files(folder: Location) -> dict[int, Location]:
    """The epoch files of one run (a trial's folder) by epoch: one listing."""
    files: dict[int, Location] = {}
    for file in sorted(folder.files(".parquet"), key=_name):
        epoch = epoch_of(file)
        if epoch is not None and files.setdefault(epoch, file) is not file:
            log.warning("%s: two files for epoch %d; %s is read", folder, epoch, files[epoch])
    return files


def write_epoch(row: Mapping[str, Any], path: Location) -> None:
    """One epoch's row, in the study's one schema (columns.epoch_types)."""
    write_rows([row], path, epoch_types())


def withdrawn_dir(directory: Location, trial_id: str) -> Location:
    """Where a study trial's withdrawn epoch files go (see the module)."""
    return directory / WITHDRAWN_DIR / EPOCHS_DIR / trial_id


def withdraw(files: Iterable[Location], target: Location) -> None:
    """Move epoch files out of the results, into `target` (kept: see the module)."""
    for file in files:
        file.move_to(target / file.name)


class EpochReader:
    """Reads a study's epoch rows: the files of trials still running, each once (they never
    change, so a file read before is not read again: ``status --watch`` and the driver read
    the same folders over and over), and the finished trials' table, again only when a commit
    changed it. A file a resume withdrew between the listing and the read is skipped."""

    def __init__(self) -> None:
        self._tables: dict[str, pa.Table] = {}
        self._snapshot = SnapshotCache()
        self.reads = 0  # files read, for the tests and the overhead benchmark

    def table(self, file: Location) -> pa.Table | None:
        try:
            return self._read(file)
        except FileNotFoundError:
            return None

    def _read(self, file: Location) -> pa.Table:
        cached = self._tables.get(file.uri)
        if cached is None:
            cached = read_arrow(file)
            self.reads += 1
            self._tables[file.uri] = cached
        return cached

    def rows(self, folder: Location) -> list[dict[str, Any]]:
        """One run's epoch rows (a trial's folder), in epoch order."""
        tables = [self.table(f) for _, f in sorted(epoch_files(folder).items())]
        return [row for t in tables if t is not None for row in t.to_pylist()]

    def trial_rows(self, directory: Location, trial_id: str) -> list[dict[str, Any]]:
        """A study trial's epoch rows: its files while it runs, the table's once committed."""
        rows = self.rows(trial_epochs_dir(directory, trial_id))
        if rows:
            return rows
        committed = snapshot_of_trial(directory, EPOCHS, trial_id)
        return sorted(committed.to_pylist(), key=lambda row: int(row["epoch"]))

    def study_table(
        self, directory: Location, columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """Every epoch row of the study (both file layouts and the table), each epoch once;
        only `columns` (those it has) where given."""
        root = directory / EPOCHS_DIR

        def pending() -> list[pa.Table]:
            files = sorted(root.files(".parquet", recursive=True), key=lambda f: f.path)
            current = {f.uri for f in files}
            self._tables = {uri: t for uri, t in self._tables.items() if uri in current}
            # A file gone since the listing was committed (read again) or withdrawn.
            return [self._read(f) for f in files if f.parent.path == root.path or epoch_of(f)]

        return read_rows(directory, EPOCHS, pending, columns, self._snapshot)

    def study_frame(
        self, directory: Location, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        table = self.study_table(directory, columns)
        return pd.DataFrame() if table is None else table.to_pandas()


def metric_by_epoch(uri: str, metric: str, trial_id: str) -> dict[int, float]:
    """A trial's value of `metric` per epoch, from the files of the study at `uri` (a path or
    URI, so that the function and its arguments pickle: Ray pickles the searcher holding it)."""
    rows = EpochReader().trial_rows(Location.of(uri), trial_id)
    return {int(row["epoch"]): float(row[metric]) for row in rows if row.get(metric) is not None}


def read_study_epochs(directory: Location) -> pd.DataFrame:
    """Every epoch row of the study in `directory`."""
    return EpochReader().study_frame(directory)


def convert_legacy(directory: Location) -> list[str]:
    """Split the one-file-per-trial epoch files of an older version's study into one file per
    epoch (the files of the older layout move to ``withdrawn/legacy/``, kept); return the trials
    converted. Run once, by the driver that resumes the study, before any trial starts."""
    converted = []
    for file in sorted((directory / EPOCHS_DIR).files(".parquet"), key=_name):
        trial_id = file.stem
        writer, folder = writer_token(), trial_epochs_dir(directory, trial_id)
        for row in read_arrow(file).to_pylist():
            write_epoch(row, epoch_path(folder, int(row["epoch"]), writer))
        file.move_to(directory / WITHDRAWN_DIR / "legacy" / EPOCHS_DIR / file.name)
        converted.append(trial_id)
    return converted


def _name(file: Location) -> str:
    return file.name
