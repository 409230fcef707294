"""Finished trials' rows as Delta Lake tables, and how every reader combines them with the rows
of the trials still running.

    tables/epochs/   the epoch rows of finished trials (a Delta table: _delta_log/ + Parquet)
    tables/trials/   their trial rows

A trial's process writes a file per epoch (:mod:`.epochs`) and the driver a file per change of
a trial's state (:mod:`.trial_states`): cheap, conflict-free writes, and the study's
write-ahead log. One committer, the driver that holds the study, folds the files of finished
trials into the tables in batches (:func:`commit_trials`), then deletes them, and compacts the
tables now and then: a reader's cost follows the rows it reads, not the files ever written,
and a study on object storage answers ``status`` in a few requests.

A reader sees every epoch once by reading in this order (docs/results.md gives it for pandas,
pyarrow, duckdb and polars): the per-epoch files first (whole), then the table's snapshot,
then it keeps a file's row only where the snapshot lacks its key. A file the committer deleted
between the listing and the read was committed first: read again (:func:`read_rows` does).
The committer appends only keys the table lacks, so a commit killed at any point is completed
by the next one, and nothing is deleted before the snapshot that holds it is committed.
Deltalake writes an object store with one writer at a time: the study's lock (the driver's
heartbeat) guarantees it, so no locking service is needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from cifartune.storage import Location
from cifartune.store.layout import TABLES_DIR

if TYPE_CHECKING:
    from deltalake import DeltaTable

log = logging.getLogger(__name__)
# A table compacts once it holds this many data files: about one per commit until then.
COMPACT_AT_FILES = 16
# Files a compaction replaced are deleted this long after: a reader that loaded an older
# snapshot (a report, a query) finishes its read first.
KEEP_REPLACED_HOURS = 1
# A checkpoint every 10 commits, and log entries older than an hour removed at compaction: a
# reader reads the newest checkpoint and at most a few entries after it.
TABLE_CONFIGURATION = {
    "delta.checkpointInterval": "10",
    "delta.logRetentionDuration": "interval 1 hours",
}
RETRIES = 5  # reads that found a file committed and deleted under them, before giving up


@dataclass(frozen=True)
class TableKind:
    """One table of the study: its name under tables/ and the columns that identify a row."""

    name: str
    key: tuple[str, ...]


EPOCHS = TableKind("epochs", ("trial_id", "epoch"))
TRIALS = TableKind("trials", ("trial_id", "seq"))


def table_location(directory: Location, kind: TableKind) -> Location:
    return directory / TABLES_DIR / kind.name


def storage_options(location: Location) -> dict[str, str]:
    """What deltalake needs to reach `location`'s store, from the variables pyarrow and boto3
    read too (an S3-compatible server through AWS_ENDPOINT_URL)."""
    if location.local:
        return {}
    options = {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}  # one writer: the study's driver
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options["AWS_ALLOW_HTTP"] = str(endpoint.startswith("http://")).lower()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    return options


def has_table(directory: Location, kind: TableKind) -> bool:
    """Whether the study has committed to the table (no deltalake import)."""
    return (table_location(directory, kind) / "_delta_log").is_dir()


def open_table(directory: Location, kind: TableKind) -> DeltaTable | None:
    """The table's latest snapshot, or None before the first commit."""
    from deltalake import DeltaTable  # its import costs more than a study without tables needs

    location = table_location(directory, kind)
    if not has_table(directory, kind):
        return None
    return DeltaTable(location.uri, storage_options=storage_options(location))


def combine(
    committed: pa.Table | None, pending: Sequence[pa.Table], key: Sequence[str]
) -> pa.Table | None:
    """The snapshot's rows, and each pending file's row whose key the snapshot lacks."""
    tail = pa.concat_tables(pending, promote_options="permissive") if pending else None
    if committed is None or committed.num_rows == 0:
        return tail
    if tail is None or tail.num_rows == 0:
        return committed
    known = committed.select(list(key)).group_by(list(key)).aggregate([])
    fresh = tail.join(known, keys=list(key), join_type="left anti")
    fresh = _like(fresh, committed.schema)
    combined = pa.concat_tables([committed, fresh], promote_options="permissive")
    return combined.combine_chunks()


class SnapshotCache:
    """The last snapshot a reader read of a table, kept while no commit changed the table: a
    reader that reads the study again (``status --watch``) reads the table once per commit."""

    def __init__(self) -> None:
        self._read_as: tuple[int, tuple[str, ...] | None] | None = None
        self._rows: pa.Table | None = None

    def rows(self, table: DeltaTable, columns: Sequence[str] | None) -> pa.Table:
        read_as = (table.version(), None if columns is None else tuple(columns))
        if self._rows is None or read_as != self._read_as:
            wanted = None if columns is None else list(columns)
            self._read_as, self._rows = read_as, table.to_pyarrow_table(columns=wanted)
        return self._rows


def read_rows(
    directory: Location,
    kind: TableKind,
    read_pending: Callable[[], Sequence[pa.Table]],
    columns: Sequence[str] | None = None,
    cache: SnapshotCache | None = None,
) -> pa.Table | None:
    """Every row of `kind`, each key once: the pending files (`read_pending`), then the
    snapshot. Read again when a pending file was committed and deleted under the read."""
    for attempt in range(RETRIES):
        try:
            pending = read_pending()
            table = open_table(directory, kind)
            wanted = None if columns is None else _present(table, columns)
            if table is None:
                committed = None
            elif cache is not None:
                committed = cache.rows(table, wanted)
            else:
                committed = table.to_pyarrow_table(columns=wanted)
        except FileNotFoundError:
            log.debug("%s: a file was committed while read (try %d)", directory, attempt + 1)
            continue
        if columns is not None:
            pending = [p.select([c for c in columns if c in p.column_names]) for p in pending]
        return combine(committed, pending, kind.key)
    raise FileNotFoundError(f"{directory}: files kept changing while read ({RETRIES} tries)")


def snapshot_of_trial(directory: Location, kind: TableKind, trial_id: str) -> pa.Table:
    """One trial's committed rows (none before its commit)."""
    table = open_table(directory, kind)
    if table is None:
        return pa.table({})
    return table.to_pyarrow_table(filters=[("trial_id", "=", trial_id)])


def committed_keys(directory: Location, kind: TableKind) -> set[tuple]:
    table = open_table(directory, kind)
    if table is None:
        return set()
    rows = table.to_pyarrow_table(columns=list(kind.key))
    return set(zip(*(rows.column(c).to_pylist() for c in kind.key), strict=True))


def append(directory: Location, kind: TableKind, rows: pa.Table) -> int:
    """Append the rows whose key the table lacks (a commit killed after its append is redone
    without duplicates); return how many."""
    from deltalake import write_deltalake

    known = committed_keys(directory, kind)
    if known:
        keys = zip(*(rows.column(c).to_pylist() for c in kind.key), strict=True)
        rows = rows.filter(pa.array([k not in known for k in keys]))
    if rows.num_rows == 0:
        return 0
    location = table_location(directory, kind)
    write_deltalake(
        location.uri,
        _for_delta(rows),
        mode="append",
        schema_mode="merge",
        storage_options=storage_options(location),
        configuration=TABLE_CONFIGURATION,
    )
    return rows.num_rows


def compact(directory: Location, kind: TableKind, *, force: bool = False) -> bool:
    """Fold the table's files into few when it holds COMPACT_AT_FILES or more (or `force`),
    then delete what compactions replaced KEEP_REPLACED_HOURS ago or more, and old log
    entries."""
    table = open_table(directory, kind)
    if table is None or (len(table.file_uris()) < COMPACT_AT_FILES and not force):
        return False
    table.optimize.compact()
    table.create_checkpoint()
    table.vacuum(
        retention_hours=KEEP_REPLACED_HOURS,
        enforce_retention_duration=False,
        dry_run=False,
    )
    table.cleanup_metadata()
    return True


def delete_files(folders: Iterable[Location]) -> None:
    """Remove committed trials' pending files (their snapshot is committed)."""
    for folder in folders:
        folder.rmtree()


def _present(table: DeltaTable | None, columns: Sequence[str]) -> list[str] | None:
    """The wanted columns the table has (a projection of a missing one fails)."""
    if table is None:
        return None
    names = {field.name for field in table.schema().fields}
    return [c for c in columns if c in names]


def _for_delta(rows: pa.Table) -> pa.Table:
    """Delta stores timestamps in microseconds, and no column of the null type."""
    fields = []
    for field in rows.schema:
        kind = field.type
        if pa.types.is_timestamp(kind):
            kind = pa.timestamp("us", tz=kind.tz)
        elif pa.types.is_null(kind):
            kind = pa.string()
        fields.append(pa.field(field.name, kind))
    return rows.cast(pa.schema(fields), safe=False)  # an older version's ns truncated


def _like(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` with the types `schema` gives its columns (a timestamp's unit, a null column)."""
    for index, name in enumerate(rows.column_names):
        if name in schema.names and rows.schema.field(name).type != schema.field(name).type:
            rows = rows.set_column(index, name, pc.cast(rows.column(name), schema.field(name).type))
    return rows
