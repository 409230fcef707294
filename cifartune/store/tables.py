"""Parquet and text files written whole and read back: through :mod:`cifartune.storage`, a
local directory or an object store, so a reader never sees a half-written file. Readers need
only pandas/pyarrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cifartune.storage import Location
from cifartune.store.columns import ENDED_AT, UTC_US


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


def rows_table(
    records: Sequence[Mapping[str, Any]], types: Mapping[str, pa.DataType] | None = None
) -> pa.Table:
    """Rows (dicts; a key missing from a row is null there) as a table with every column of
    `types`, in their order and of their type, then any other column the rows have (its type
    inferred); timestamps from Unix seconds. Built with pyarrow alone: a trial writes a file
    per epoch, and a pandas frame per write cost more than a small trial's epoch."""
    kinds = dict(types or {})
    names = [*kinds, *(n for n in dict.fromkeys(k for r in records for k in r) if n not in kinds)]
    columns = {}
    for name in names:
        values = [record.get(name) for record in records]
        kind = kinds.get(name, UTC_US if name == ENDED_AT else None)
        if kind == UTC_US:
            values = [_microseconds(v) for v in values]
        columns[name] = pa.array(values, type=kind, from_pandas=True)
    return pa.table(columns)


def write_rows(
    records: Sequence[Mapping[str, Any]],
    path: Path | Location,
    types: Mapping[str, pa.DataType] | None = None,
) -> None:
    """Write `records` (see :func:`rows_table`) as one Parquet file, whole."""
    sink = pa.BufferOutputStream()
    pq.write_table(rows_table(records, types), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _microseconds(value: Any) -> int | None:
    """Unix seconds as measured, or a timestamp read back from a file, as µs since the epoch."""
    if _missing(value):
        return None
    if isinstance(value, datetime):
        return int(pd.Timestamp(value).value) // 1000
    return round(float(value) * 1e6)


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


def read_arrow(path: Path | Location) -> pa.Table:
    """A Parquet file read as a reader of files others write must: its bytes in one open, then
    parsed (a reader that opens a path twice, footer then pages, can mix two files)."""
    return pq.read_table(pa.BufferReader(Location.of(path).read_bytes()))


def concat_frames(tables: Sequence[pa.Table]) -> pd.DataFrame:
    """Tables of one kind (epoch rows, trial rows) as one frame; older files that lack a column
    have it null."""
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def read_records(path: Path | Location, keep: Callable[[str], bool] | None = None) -> list[dict]:
    """A Parquet file's rows as dicts, only its columns that `keep` accepts (all without it).
    pyarrow alone, through one ParquetFile: the driver reads a trial's epoch file at each of
    its results, and pandas' reader cost several times more than this for files this small."""
    source = pq.ParquetFile(pa.BufferReader(Location.of(path).read_bytes()))
    names = None if keep is None else [n for n in source.schema_arrow.names if keep(n)]
    return list(source.read(columns=names).to_pylist())


def _missing(value: Any) -> bool:
    """Whether a row's value is missing: None (pyarrow's null), NaN or NaT (a pandas frame's)."""
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))
