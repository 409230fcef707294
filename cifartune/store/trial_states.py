"""The trial table as files that never change once a reader can see them:

    trials/<trial>/<seq:05d>.parquet

one row each: the trial as the driver saw it when its state changed (started, running, finished,
failed, retried), written whole by the driver and never rewritten. A trial's newest file (the
highest ``seq``) is its current row; its summary columns (epochs run, best epoch and value,
time) are as of that moment, and cifartune's readers recompute them from the epoch rows, the
truth. Writes follow state changes, a few per trial, not epochs: their number and cost do not
grow with the study. Once the trial has finished, the driver commits its newest row to the
trials table and deletes its files (:mod:`.snapshot`).

Studies written by older versions hold one ``trials.parquet``, replaced whole as the study ran;
:func:`read_trial_rows` reads it where ``trials/`` is missing, and :func:`convert_legacy` turns
it into the files above once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from cifartune.storage import Location
from cifartune.store.columns import trial_types
from cifartune.store.layout import TRIALS_DIR, TRIALS_FILE, WITHDRAWN_DIR
from cifartune.store.snapshot import TRIALS, read_rows
from cifartune.store.tables import read_arrow, read_table, write_rows

SEQ = "seq"
# The states of a trial that has ended: Ray's own, and STOPPED (ended by the study's budget).
FINAL_STATES = ("TERMINATED", "ERROR", "STOPPED")


def trial_states_dir(directory: Location, trial_id: str) -> Location:
    return directory / TRIALS_DIR / trial_id


def write_trial_row(directory: Location, row: Mapping[str, Any], seq: int) -> None:
    """The trial's row as of now, as its `seq`-th (the next after its newest)."""
    path = trial_states_dir(directory, str(row["trial_id"])) / f"{seq:05d}.parquet"
    write_rows([{**row, SEQ: seq}], path, trial_types())


def read_trial_rows(directory: Location) -> pd.DataFrame:
    """Each trial's current row (its newest, whose ``seq`` it holds): from the files of trials
    not yet committed and the finished trials' table (:mod:`.snapshot`), or the older layout's
    trials.parquet."""
    root = directory / TRIALS_DIR

    def pending() -> list[pa.Table]:
        newest: dict[str, Location] = {}
        for file in root.files(".parquet", recursive=True):
            trial_id = file.parent.name
            if file.stem.isdigit() and (
                trial_id not in newest or file.name > newest[trial_id].name
            ):
                newest[trial_id] = file
        return [read_arrow(newest[t]) for t in sorted(newest)]

    rows = read_rows(directory, TRIALS, pending)
    if rows is None or rows.num_rows == 0:
        legacy = directory / TRIALS_FILE
        return read_table(legacy) if legacy.is_file() else pd.DataFrame()
    frame = rows.to_pandas()
    newest_first = frame.sort_values(["trial_id", SEQ], ascending=[True, False], kind="stable")
    return newest_first.drop_duplicates("trial_id").reset_index(drop=True)


def convert_legacy(directory: Location) -> int:
    """Turn an older version's trials.parquet into one row file per trial (the old file moves
    to ``withdrawn/legacy/``); return the trials converted."""
    legacy = directory / TRIALS_FILE
    if not legacy.is_file():
        return 0
    rows = read_table(legacy).to_dict("records")
    for row in rows:
        write_trial_row(directory, row, 1)
    legacy.move_to(directory / WITHDRAWN_DIR / "legacy" / TRIALS_FILE)
    return len(rows)


def stop_unfinished(directory: Location) -> list[str]:
    """End as stopped by the study's budget each trial that had not ended (a budget spent
    while the study was interrupted): a new row each, STOPPED. Return their ids."""
    rows = read_trial_rows(directory)
    if rows.empty:
        return []
    unfinished = rows[~rows["state"].isin(FINAL_STATES)]
    for row in unfinished.to_dict("records"):
        stopped = {**row, "state": "STOPPED", "stop_reason": "budget"}
        write_trial_row(directory, stopped, int(row.get(SEQ) or 0) + 1)
    return list(unfinished["trial_id"])
