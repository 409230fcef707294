"""Finished trials committed to the study's Delta tables: readers see the same study before,
during and after a commit, each epoch once, whatever the interleaving of a read with a commit;
a committing process killed at any point leaves nothing lost or doubled once the next commit
runs; compaction keeps the table's files few."""

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from deltalake import DeltaTable

from cifartune.storage import Location
from cifartune.store import snapshot
from cifartune.store.committer import commit_trials, uncommitted_finished
from cifartune.store.epochs import EpochReader
from cifartune.store.study_data import read_study

from ..support import FAULTS, KILL_DURING_COMMIT, fabricate_study

SPEC = {"name": "s", "base": {"epochs": 3}, "space": {"optim.lr": [0.1, 0.05, 0.02]}}
CURVES = {
    "t1": ({"optim.lr": 0.1}, [40.0, 50.0, 55.0], "TERMINATED", False),
    "t2": ({"optim.lr": 0.05}, [42.0, 52.0, 58.0], "TERMINATED", False),
    "t3": ({"optim.lr": 0.02}, [30.0, 35.0], "RUNNING", False),
}
KEY = ["trial_id", "epoch"]


@pytest.fixture
def study(tmp_path):
    return Location.of(fabricate_study(tmp_path, SPEC, CURVES))


def epochs_of(directory) -> pd.DataFrame:
    return read_study(directory).epochs.sort_values(KEY, ignore_index=True)


def same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    columns = [c for c in want.columns if c in got.columns]
    pd.testing.assert_frame_equal(
        got.sort_values(KEY, ignore_index=True)[columns],
        want.sort_values(KEY, ignore_index=True)[columns],
        check_dtype=False,
    )


def test_a_commit_moves_finished_trials_into_the_tables_and_readers_see_the_same_study(study):
    before = read_study(study)
    assert uncommitted_finished(study) == {"t1", "t2"}  # t3 still runs
    assert commit_trials(study, uncommitted_finished(study)) == 2
    after = read_study(study)
    same_rows(after.epochs, before.epochs)
    pd.testing.assert_frame_equal(
        after.trials.sort_values("trial_id", ignore_index=True)[before.trials.columns],
        before.trials.sort_values("trial_id", ignore_index=True),
        check_dtype=False,
    )
    # The committed trials' files are gone; the running trial's stay; nothing left to commit.
    assert not (study / "epochs" / "t1").exists() and not (study / "trials" / "t2").exists()
    assert len(list((study / "epochs" / "t3").files(".parquet"))) == 2
    assert uncommitted_finished(study) == set()
    # A reader of the table alone (any Delta reader) sees the finished trials' rows.
    table = DeltaTable(str(study / "tables" / "epochs")).to_pandas()
    assert sorted(set(table["trial_id"])) == ["t1", "t2"] and len(table) == 6


def test_a_trial_reads_its_own_rows_from_the_table_once_committed(study):
    reader = EpochReader()
    before = reader.trial_rows(study, "t1")
    commit_trials(study, ["t1"])
    after = EpochReader().trial_rows(study, "t1")
    assert [r["epoch"] for r in after] == [1, 2, 3]
    assert [r["val/top1"] for r in after] == [r["val/top1"] for r in before]


@pytest.mark.parametrize("moment", ["after the files were read", "before the files were listed"])
def test_a_commit_during_a_read_leaves_each_epoch_once(study, moment):
    """The read is the files first, then the snapshot: a commit between the two is in the
    snapshot, and its rows are taken once; a commit before the listing finds no file left."""
    want = epochs_of(study)
    reader = EpochReader()
    real_open = snapshot.open_table
    commits = []

    def open_after_a_commit(directory, kind):
        if not commits and moment == "after the files were read":
            commits.append(0)  # first: the commit opens the table too
            commits[0] = commit_trials(study, ["t1", "t2"])
        return real_open(directory, kind)

    def files_committed_first(root, *args, **kwargs):
        if not commits:
            commits.append(0)
            commits[0] = commit_trials(study, ["t1", "t2"])
        return real_files(root, *args, **kwargs)

    real_files = Location.files
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot, "open_table", open_after_a_commit)
        if moment == "before the files were listed":
            patch.setattr(Location, "files", files_committed_first)
        got = reader.study_frame(study)
    assert commits == [2]
    assert not got.duplicated(KEY).any()
    same_rows(got, want)


def test_a_file_committed_between_listing_and_read_is_read_again_from_the_table(study):
    want = epochs_of(study)
    reader = EpochReader()
    real_read = reader._read
    commits = []

    def read_after_a_commit(file):
        if not commits:
            commits.append(0)
            commits[0] = commit_trials(study, ["t1", "t2"])
        return real_read(file)

    reader._read = read_after_a_commit
    same_rows(reader.study_frame(study), want)


# The committer as the driver runs it, in a process that the faults kill (support.FAULTS).
COMMIT = """
import sys
from cifartune.storage import Location
from cifartune.store import committer
committer.commit_trials(Location.of(sys.argv[1]), ["t1", "t2"], final=True)
"""


@pytest.mark.parametrize(
    "moment",
    ["after the epochs are committed", "before the files are deleted", "during compaction"],
)
def test_a_committer_killed_at_any_point_loses_nothing_and_the_next_commit_completes(study, moment):
    want = read_study(study)
    faults = {"PYTHONPATH": str(FAULTS), KILL_DURING_COMMIT: moment}
    killed = subprocess.run(
        [sys.executable, "-c", COMMIT, study.path],
        capture_output=True, text=True, env={**os.environ, **faults},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Right after the kill, a reader sees every epoch once.
    got = epochs_of(study)
    assert not got.duplicated(KEY).any()
    same_rows(got, want.epochs)
    assert len(read_study(study).trials) == 3
    # The next commit (a resumed driver's) finds the files left and completes the commit.
    assert uncommitted_finished(study) == {"t1", "t2"} or moment == "during compaction"
    commit_trials(study, uncommitted_finished(study), final=True)
    same_rows(epochs_of(study), want.epochs)
    table = DeltaTable(str(study / "tables" / "epochs")).to_pandas()
    assert len(table) == 6 and not table.duplicated(KEY).any()
    assert uncommitted_finished(study) == set()


def test_compaction_keeps_fewer_data_files_than_commits(tmp_path, monkeypatch):
    curves = {f"t{i:02d}": ({"optim.lr": 0.1}, [40.0, 50.0], "TERMINATED", False) for i in range(8)}
    study = Location.of(fabricate_study(tmp_path, {**SPEC, "space": {}}, curves))
    monkeypatch.setattr(snapshot, "COMPACT_AT_FILES", 4)
    for trial_id in sorted(curves):  # a commit per trial: a file per commit until compaction
        commit_trials(study, [trial_id])
    table = DeltaTable(str(study / "tables" / "epochs"))
    assert len(table.file_uris()) < 4
    assert len(table.to_pandas()) == 16
    commit_trials(study, [], final=True)
    assert len(DeltaTable(str(study / "tables" / "epochs")).file_uris()) == 1
