"""The one committer of a study: the driver folds finished trials' files (their epoch rows and
trial rows) into the study's tables in batches, then deletes the files, and compacts.

Order, so that a commit killed at any point loses nothing and repeats nothing (see
:mod:`.snapshot`): append the epoch rows the table lacks, append the trial rows likewise,
delete the files, compact. The next commit (the same driver's, or a resumed study's) finds
the files still there and appends only what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pyarrow as pa

from cifartune.storage import Location
from cifartune.store.checkpoints import finished_trials
from cifartune.store.epochs import epoch_files, trial_epochs_dir
from cifartune.store.layout import EPOCHS_DIR, TRIALS_DIR
from cifartune.store.snapshot import EPOCHS, TRIALS, append, compact, delete_files
from cifartune.store.tables import read_arrow
from cifartune.store.trial_states import trial_states_dir

log = logging.getLogger(__name__)


def uncommitted_finished(directory: Location) -> set[str]:
    """Trials Ray reported complete whose files are still to commit (three listings)."""
    folders = {d.name for d in (directory / EPOCHS_DIR).subdirs()}
    folders |= {d.name for d in (directory / TRIALS_DIR).subdirs()}
    return folders & finished_trials(directory)


def commit_trials(directory: Location, trial_ids: Iterable[str], *, final: bool = False) -> int:
    """Commit the files of `trial_ids` (finished trials) to the tables, delete them, compact
    (every table, when `final`: the study ends); return the trials committed."""
    trials = sorted(set(trial_ids))
    epoch_rows: list[pa.Table] = []
    trial_rows: list[pa.Table] = []
    folders: list[Location] = []
    for trial_id in trials:
        epochs = trial_epochs_dir(directory, trial_id)
        states = trial_states_dir(directory, trial_id)
        epoch_rows += [read_arrow(f) for _, f in sorted(epoch_files(epochs).items())]
        rows = sorted(states.files(".parquet"), key=lambda f: f.name)
        trial_rows += [read_arrow(rows[-1])] if rows else []
        folders += [epochs, states]
    if epoch_rows:
        append(directory, EPOCHS, pa.concat_tables(epoch_rows, promote_options="permissive"))
    if trial_rows:
        append(directory, TRIALS, pa.concat_tables(trial_rows, promote_options="permissive"))
    delete_files(folders)
    for kind in (EPOCHS, TRIALS):
        compact(directory, kind, force=final)
    if trials:
        log.debug("%s: committed %d finished trials", directory, len(trials))
    return len(trials)
