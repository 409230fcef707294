"""Tidy Parquet results: one row per trial-epoch, ``config/*`` columns beside the metrics.

Files are written whole to a temporary name and renamed into place, so a reader never sees a
half-written file and a crash loses at most the epoch in flight. Readers need only pandas/pyarrow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CONFIG_PREFIX = "config/"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` as one Parquet file, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


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


def read_parquet_dir(directory: Path) -> pd.DataFrame:
    """All ``*.parquet`` files under `directory` (skipping temporaries) as one frame."""
    files = sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
