"""A population-based training study's lineage: each exploit, as a file that never changes,

    lineage/<trial>/<epoch:05d>-<writer>.parquet

one row: at the end of ``epoch``, the trial took the weights and optimizer state of
``donor_trial_id`` at ``donor_epoch`` (the same epoch: the population steps together) and went on
with new hyperparameters, ``from/<key>`` -> ``to/<key>`` for each key PBT may change. Written by
the trial that took them, before it trains again. With the epoch rows' ``config/*`` (the values in
force at each epoch), it says which hyperparameters made a model, epoch by epoch
(:func:`lineage_schedule`), which ``cifartune train --replay`` trains again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from cifartune.config.sections import MUTABLE_KEYS
from cifartune.storage import Location
from cifartune.store.columns import CONFIG_PREFIX, KEY_TYPES, UTC_US, config_types
from cifartune.store.epochs import epoch_files, epoch_of, epoch_path
from cifartune.store.layout import EPOCHS_DIR, LINEAGE_DIR
from cifartune.store.snapshot import EPOCHS, open_table
from cifartune.store.tables import concat_frames, read_arrow, write_rows

FROM, TO = "from/", "to/"


def lineage_dir(directory: Location, trial_id: str) -> Location:
    return directory / LINEAGE_DIR / trial_id


def lineage_types() -> dict[str, Any]:
    kinds = config_types()
    changes = {f"{side}{key}": kinds[CONFIG_PREFIX + key] for key in MUTABLE_KEYS
               for side in (FROM, TO)}  # fmt: skip
    return {
        **KEY_TYPES,
        "epoch": KEY_TYPES["seed"],
        "donor_trial_id": KEY_TYPES["trial_id"],
        "donor_epoch": KEY_TYPES["seed"],
        "time/at": UTC_US,
        **changes,
    }


def write_exploit(
    directory: Location,
    keys: Mapping[str, Any],
    *,
    epoch: int,
    donor: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    writer: str,
    at: float,
) -> None:
    """The row of one exploit (see the module); `old` and `new` are flat configs."""
    row = {**keys, "epoch": epoch, "donor_trial_id": donor, "donor_epoch": epoch, "time/at": at}
    for key in MUTABLE_KEYS:
        row[FROM + key], row[TO + key] = old.get(key), new.get(key)
    path = epoch_path(lineage_dir(directory, str(keys["trial_id"])), epoch, writer)
    write_rows([row], path, lineage_types())


def trial_exploits(directory: Location, trial_id: str) -> list[dict[str, Any]]:
    """The trial's exploits, in epoch order."""
    files = epoch_files(lineage_dir(directory, trial_id))
    return [read_arrow(files[epoch]).to_pylist()[0] for epoch in sorted(files)]


def read_lineage(directory: Location) -> pd.DataFrame:
    """Every exploit of the study (empty for a study that is not PBT)."""
    files = sorted(
        (directory / LINEAGE_DIR).files(".parquet", recursive=True), key=lambda f: f.path
    )
    return concat_frames([read_arrow(f) for f in files])


def lineage_schedule(
    epochs: pd.DataFrame, lineage: pd.DataFrame, trial_id: str, until: int | None = None
) -> list[tuple[int, str]]:
    """Which trial trained each epoch of `trial_id`'s model up to `until` (its last epoch):
    [(epoch, trial that trained it)], following its exploits back to the first trial. The
    epoch rows of those trials at those epochs hold the hyperparameters in force."""
    mine = epochs[epochs["trial_id"] == trial_id]
    last = int(mine["epoch"].max()) if until is None else until
    taken = lineage[lineage["trial_id"] == trial_id] if not lineage.empty else lineage
    taken = taken[taken["epoch"] <= last] if not taken.empty else taken
    if taken.empty:
        return [(epoch, trial_id) for epoch in range(1, last + 1)]
    exploit = taken.sort_values("epoch").iloc[-1]
    donor_epoch = int(exploit["donor_epoch"])
    before = lineage_schedule(epochs, lineage, str(exploit["donor_trial_id"]), donor_epoch)
    return [*before, *((epoch, trial_id) for epoch in range(donor_epoch + 1, last + 1))]


def spans(trained_by: list[tuple[int, str]]) -> list[tuple[int, int, str]]:
    """[(first epoch, last epoch, trial)] from :func:`lineage_schedule`'s [(epoch, trial)]."""
    runs: list[tuple[int, int, str]] = []
    for epoch, trial in trained_by:
        if runs and runs[-1][2] == trial:
            runs[-1] = (runs[-1][0], epoch, trial)
        else:
            runs.append((epoch, epoch, trial))
    return runs


def final_values(epochs: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """Each trial's `metric` at its last epoch, best first: a PBT member's model is its last
    epoch's (an earlier, better epoch may be weights it gave up at an exploit)."""
    last = epochs.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")[metric]
    return pd.to_numeric(last, errors="coerce").dropna().sort_values(ascending=mode == "min")


def open_barrier(directory: Location, perturbation_epochs: Collection[int]) -> int | None:
    """The first perturbation epoch a population-based training study has not passed: no trial
    has an epoch file after it and no trial took another's state there (a barrier passed before
    a kill shows in either). None when every one is passed. File names, the lineage and the
    epoch column of finished members' table."""
    root = directory / EPOCHS_DIR
    newest = max((epoch_of(f) or 0 for f in root.files(".parquet", recursive=True)), default=0)
    table = open_table(directory, EPOCHS)
    if table is not None:
        newest = max(
            newest, pc.max(table.to_pyarrow_table(columns=["epoch"])["epoch"]).as_py() or 0
        )
    exploited = {int(e) for e in read_lineage(directory).get("epoch", [])}
    open_ones = [p for p in sorted(perturbation_epochs) if p >= newest and p not in exploited]
    return open_ones[0] if open_ones else None
