"""A driver SIGKILLed while it commits finished trials to the study's tables (a preempted node)
or compacts them: the resumed study ends with every epoch stored once, in the tables, and none
of the rows written before the kill lost. The kill comes from inside the driver at a given
moment of its first commit (support/faults/sitecustomize.py), not from a timed signal."""

import contextlib
import os
import signal

import pytest
from deltalake import DeltaTable

from cifartune.store.study_data import read_study

from ..support import (
    FAULTS,
    KILL_DURING_COMMIT,
    epoch_rows,
    run_cli,
    session_processes,
    start_study,
    stopped_at_exit,
    wait_for,
    withdrawn_rows,
    write_spec,
)

pytestmark = pytest.mark.slow
KEY = ["trial_id", "epoch"]


def _lose_the_node(session: int) -> None:
    """What a lost node leaves: the driver's Ray processes (its session) end without cleaning
    up, like the driver itself."""
    for pid in session_processes(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not session_processes(session), timeout=60)


@pytest.mark.parametrize("moment", ["after the epochs are committed", "during compaction"])
def test_a_driver_killed_during_a_commit_resumes_with_every_epoch_stored_once(tmp_path, moment):
    spec = write_spec(
        tmp_path,
        space={"optim.lr": [0.05, 0.02, 0.01]},
        resources={"cpus": 1, "max_concurrent": 1},
    )
    results = tmp_path / "r" / "tiny"
    driver = start_study(spec, tmp_path, PYTHONPATH=str(FAULTS), **{KILL_DURING_COMMIT: moment})
    with stopped_at_exit(driver):
        _, stderr = driver.communicate(timeout=300)
        child = read_study(results).meta["driver_pid"]  # the driver, in a session of its own
        _lose_the_node(child)
    assert driver.returncode == 128 + signal.SIGKILL, stderr[-3000:]  # its driver's SIGKILL
    before = read_study(results).epochs
    assert not before.empty and not before.duplicated(KEY).any()

    resumed = run_cli(["resume", str(results)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = read_study(results)
    assert study.meta["state"] == "completed"
    assert len(study.trials) == 3 and set(study.trials["state"]) == {"TERMINATED"}
    for _, rows in study.epochs.groupby("trial_id"):
        assert sorted(rows["epoch"]) == [1, 2]
    assert epoch_rows(before) - withdrawn_rows(results) <= epoch_rows(study.epochs)
    # Everything is in the tables now, each epoch once, and no epoch file is left over.
    table = DeltaTable(str(results / "tables" / "epochs")).to_pandas()
    assert len(table) == 6 and not table.duplicated(KEY).any()
    assert not list((results / "epochs").rglob("*.parquet"))
