"""The results layout of older versions (one epoch file per trial, rewritten in place, and one
trials.parquet) is still read as it is, and a resume converts it once into files that never
change, reading back the same rows."""

import shutil

import pandas as pd
import pytest

from cifartune.storage import Location
from cifartune.store.epochs import convert_legacy as convert_epochs
from cifartune.store.epochs import epoch_files, trial_epochs_dir
from cifartune.store.layout import EPOCHS_DIR, TRIALS_FILE, WITHDRAWN_DIR
from cifartune.store.study_data import read_study
from cifartune.store.trial_states import convert_legacy as convert_trials
from cifartune.store.trial_states import read_trial_rows

from ..support import REPO

COMMITTED = REPO / "reports" / "cpu" / "results"


def missing_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    """Values compared as values: a missing one is None whether a column typed it NaN or not."""
    return frame.astype(object).where(frame.notna(), None).reset_index(drop=True)


@pytest.mark.parametrize("name", ["optuna_asha_cpu", "seed_lr_batch_cpu"])
def test_a_study_of_the_older_layout_is_read_and_converted_once(tmp_path, name):
    study = tmp_path / name
    shutil.copytree(COMMITTED / name, study)
    assert (study / TRIALS_FILE).is_file() and list((study / EPOCHS_DIR).glob("*.parquet"))
    before = read_study(study)
    assert len(before.epochs) > 0 and len(before.trials) == before.epochs["trial_id"].nunique()

    directory = Location.of(study)
    converted = convert_epochs(directory)
    assert sorted(converted) == sorted(before.trials["trial_id"])
    assert convert_trials(directory) == len(before.trials)
    # Nothing of the older layout is left among the results; it is kept aside.
    assert not list((study / EPOCHS_DIR).glob("*.parquet")) and not (study / TRIALS_FILE).exists()
    kept = study / WITHDRAWN_DIR / "legacy"
    assert (kept / TRIALS_FILE).is_file() and len(list((kept / EPOCHS_DIR).iterdir())) == len(
        converted
    )
    for trial_id in converted:  # one file per epoch now
        files = epoch_files(trial_epochs_dir(directory, trial_id))
        assert sorted(files) == sorted(before.epochs.loc[before.epochs["trial_id"] == trial_id,
                                                         "epoch"])  # fmt: skip
    after = read_study(study)
    columns = list(before.epochs.columns)  # the converted rows: the same, now typed columns
    pd.testing.assert_frame_equal(missing_as_none(after.epochs[columns]),
                                  missing_as_none(before.epochs[columns]))  # fmt: skip
    summary = ["trial_id", "state", "stop_reason", "best_epoch", "best_metric", "epochs_run"]
    pd.testing.assert_frame_equal(
        after.trials.sort_values("trial_id")[summary].reset_index(drop=True),
        before.trials.sort_values("trial_id")[summary].reset_index(drop=True),
        check_dtype=False,
    )
    assert len(read_trial_rows(directory)) == len(before.trials)
    # Once: a second conversion finds nothing to do.
    assert convert_epochs(directory) == [] and convert_trials(directory) == 0
