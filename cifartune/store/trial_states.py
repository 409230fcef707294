"""The trial table as files that never change once a reader can see them:

    trials/<trial>/<seq:05d>.parquet

one row each: the trial as the driver saw it when its state changed (started, running, finished,
failed, retried), written whole by the driver and never rewritten. A trial's newest file (the
highest ``seq``) is its current row; its summary columns (epochs run, best epoch and value,
time) are as of that moment, and cifartune's readers recompute them from the epoch rows, the
truth. Writes follow state changes, a few per trial, not epochs: their number and cost do not
grow with the study.

Studies written by older versions hold one ``trials.parquet``, replaced whole as the study ran;
:func:`read_trial_rows` reads it where ``trials/`` is missing, and :func:`convert_legacy` turns
it into the files above once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cifartune.storage import Location
from cifartune.store.columns import trial_types
from cifartune.store.layout import TRIALS_DIR, TRIALS_FILE, WITHDRAWN_DIR
from cifartune.store.tables import concat_frames, read_arrow, read_table, write_rows

SEQ = "seq"
# The states of a trial that has ended: Ray's own, and STOPPED (ended by the study's budget).
FINAL_STATES = ("TERMINATED", "ERROR", "STOPPED")


def trial_states_dir(directory: Location, trial_id: str) -> Location:
    return directory / TRIALS_DIR / trial_id


def last_seq(directory: Location, trial_id: str) -> int:
    """The sequence number of the trial's newest row; 0 before any (one listing)."""
    names = [f.stem for f in trial_states_dir(directory, trial_id).files(".parquet")]
    return max((int(n) for n in names if n.isdigit()), default=0)


def write_trial_row(directory: Location, row: Mapping[str, Any], seq: int) -> None:
    """The trial's row as of now, as its `seq`-th (the next after its newest)."""
    path = trial_states_dir(directory, str(row["trial_id"])) / f"{seq:05d}.parquet"
    write_rows([{**row, SEQ: seq}], path, trial_types())


def read_trial_rows(directory: Location) -> pd.DataFrame:
    """Each trial's current row (its newest file, whose ``seq`` it holds), or the older
    layout's trials.parquet."""
    root = directory / TRIALS_DIR
    newest: dict[str, Location] = {}
    for file in root.files(".parquet", recursive=True):
        trial_id = file.parent.name
        if file.stem.isdigit() and (trial_id not in newest or file.name > newest[trial_id].name):
            newest[trial_id] = file
    if not newest:
        legacy = directory / TRIALS_FILE
        return read_table(legacy) if legacy.is_file() else pd.DataFrame()
    return concat_frames([read_arrow(newest[t]) for t in sorted(newest)])


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
