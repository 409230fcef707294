"""Interruptions at any moment, on a real local Ray runtime: the study's whole process group is
killed, sent SIGTERM or SIGHUP at points found by watching its results files, resumed with
the command it printed, and compared with one uninterrupted run."""

import contextlib
import itertools
import os
import shlex
import signal
import socket

import pandas as pd
import pytest

from cifartune.store.study_data import read_study

from ..store.test_optuna_mirror import mirror_content
from ..support import (
    DETERMINISTIC,
    TINY_BASE,
    epochs_so_far,
    run_cli,
    session_processes,
    start_cli,
    start_study,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.slow

FIELDS = dict(
    base={**TINY_BASE, "epochs": 4, "data": {**TINY_BASE["data"], "train_subset": 300}},
    space={"optim.lr": [0.05, 0.02, 0.01]},
    resources={"cpus": 1, "max_concurrent": 2},
    test_best=3,
)
KEY = ["config/optim.lr", "epoch"]


def _finished_trials(results):
    try:
        trials = read_study(results).trials
    except Exception:
        return 0
    return int((trials["state"] == "TERMINATED").sum()) if "state" in trials else 0


def _kill_group(process, results):
    """Power loss: SIGKILL every process of the command's session and of its study's child
    (the driver, in a session of its own with Ray's processes): nothing gets to clean up."""
    child = read_study(results).meta.get("driver_pid")
    for pid in [*session_processes(child), *session_processes(process.pid)] if child else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    wait_for(lambda: not session_processes(process.pid), timeout=60)
    if child is not None:
        wait_for(lambda: not session_processes(child), timeout=60)


def _signal_group(driver, results, signum, after_epochs=None):
    """Send `signum` to the driver's whole process group once it runs trials (more epochs than
    `after_epochs`, or every epoch written); it must end the study interrupted with exit 130,
    print the resume command and leave no process behind. Returns its stderr."""
    # The study may already be complete (a slow machine finished it in the previous phase):
    # then the driver says so and exits 0 without taking the study over.
    wait_for(lambda: read_study(results).meta.get("pid") == driver.pid or driver.poll() == 0)
    if driver.poll() == 0:
        driver.communicate(timeout=60)
        return f"continue it with: cifartune resume {results}"
    child = read_study(results).meta["driver_pid"]  # runs the study in a session of its own
    if after_epochs is not None:
        wait_for(lambda: len(epochs_so_far(results)) > min(after_epochs, 3 * 4 - 1), timeout=300)
    os.killpg(driver.pid, signum)
    # Bounded well below Ray's 60 s wait for a dead GCS, which is what must not happen.
    stdout, stderr = driver.communicate(timeout=45)
    if driver.returncode == 0:  # it finished before the signal landed: nothing left to check
        return f"continue it with: cifartune resume {results}"
    assert driver.returncode == 130 and "Traceback" not in stderr, stderr
    assert (stdout + stderr).count("continue it with: ") == 1, stdout + stderr  # said once
    assert f"continue it with: cifartune resume {results}" in stderr, stderr
    assert read_study(results).meta["state"] == "interrupted"
    wait_for(lambda: not session_processes(driver.pid) and not session_processes(child), 60)
    return stderr


def _resume_command(stderr):
    """The command the CLI printed to continue the study, exactly as printed."""
    line = next(x for x in stderr.splitlines() if "continue it with: " in x)
    return shlex.split(line.split("continue it with: ", 1)[1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    spec = write_spec(root, name="ref", **FIELDS)
    result = run_cli(["run", str(spec), "--storage", str(root / "r")], cwd=root)
    assert result.returncode == 0, result.stderr
    return read_study(root / "r" / "ref")


def test_killed_at_any_moment_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    spec = write_spec(tmp_path, name="cut", **FIELDS)
    results = tmp_path / "r" / "cut"
    kept = []  # epoch rows present at each kill: they must survive unchanged

    # 1. Mid-trial, right after the first epoch row appears.
    driver = start_study(spec, tmp_path)
    wait_for(lambda: len(epochs_so_far(results)) >= 1)
    _kill_group(driver, results)
    kept.append(epochs_so_far(results))
    status = run_cli(["status", str(results)])
    assert "interrupted: its driver pid" in status.stdout, status.stdout
    assert f"cifartune resume {results}" in status.stdout
    again = run_cli(["run", str(spec), "--storage", str(tmp_path / "r")], cwd=tmp_path)
    assert again.returncode == 2 and f"cifartune resume {results}" in again.stderr

    # 2. SIGTERM to the whole process group (what `timeout`, Slurm's scancel and systemd send)
    # after some trials finished: Ray's own processes die with the driver. Meanwhile a second
    # driver for the same study is refused.
    driver = start_cli(["resume", str(results)], tmp_path)
    wait_for(lambda: read_study(results).meta.get("pid") == driver.pid)
    second = run_cli(["resume", str(results)], cwd=tmp_path)
    assert second.returncode == 2 and "in use by another cifartune run" in second.stderr
    assert f"driver pid {driver.pid} on {socket.gethostname()}" in second.stderr
    wait_for(lambda: _finished_trials(results) >= 1)
    kept.append(epochs_so_far(results))
    stderr = _signal_group(driver, results, signal.SIGTERM)

    # 3. SIGHUP to the group (a closed ssh session) while trials run: the same clean stop.
    driver = start_cli(["resume", str(_resume_command(stderr)[2])], tmp_path)
    stderr = _signal_group(driver, results, signal.SIGHUP, after_epochs=len(epochs_so_far(results)))

    # 4. Killed outright once every epoch is written: during the last trials' completion or the
    # test scoring.
    driver = start_cli(["resume", str(results)], tmp_path)
    wait_for(lambda: len(epochs_so_far(results)) >= 3 * 4, timeout=300)
    _kill_group(driver, results)
    kept.append(epochs_so_far(results))
    stderr = f"continue it with: cifartune resume {results}"

    final = run_cli(_resume_command(stderr)[1:], cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    study = read_study(results)
    assert study.meta["state"] == "completed"
    got, want = study.epochs, uninterrupted.epochs
    assert not got.duplicated(["trial_id", "epoch"]).any()
    assert sorted(got.groupby("trial_id")["epoch"].apply(list).tolist()) == [[1, 2, 3, 4]] * 3
    # Same trials, same states, and the numbers of an uninterrupted run.
    assert sorted(study.trials["trial_id"]) == sorted(got["trial_id"].unique())
    assert set(study.trials["stop_reason"]) == {"completed"}
    cols = KEY + DETERMINISTIC[1:]
    pd.testing.assert_frame_equal(
        got.sort_values(KEY, ignore_index=True)[cols],
        want.sort_values(KEY, ignore_index=True)[cols],
    )
    # Rows written before each kill are still there, unchanged (not recomputed: same pid/time).
    for before in kept:
        if before.empty:
            continue
        merged = before.merge(got, on=["trial_id", "epoch"], suffixes=("", "_now"))
        assert len(merged) == len(before)
        for column in ("pid", "time/ended_at", "val/loss"):
            assert (merged[column] == merged[f"{column}_now"]).all(), column
    # The test set was scored from each trial's best-validation epoch.
    test = study.test.set_index("trial_id")
    assert len(test) == 3
    for trial in study.trials.itertuples():
        assert test.loc[trial.trial_id, "epoch"] == trial.best_epoch
        assert test.loc[trial.trial_id, "val/top1"] == trial.best_metric
    pd.testing.assert_series_equal(
        study.test["test/top1"].sort_values(ignore_index=True),
        uninterrupted.test["test/top1"].sort_values(ignore_index=True),
    )

    # Its Optuna mirror, written as it ran through every kill, equals the uninterrupted one's.
    assert mirror_content(results) == mirror_content(uninterrupted.directory.local_path)

    # Resuming a completed study changes nothing and exits 0 (scripts loop on it).
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob("*.parquet")}
    done = run_cli(["resume", str(results)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "already completed" in done.stdout
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.parquet")} == stamps


def test_random_search_repeats_share_a_configuration_and_max_concurrent_holds(tmp_path):
    spec = write_spec(
        tmp_path,
        base={**TINY_BASE, "epochs": 1},
        space={"optim.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
        search={"algorithm": "random", "samples": 2, "seed": 3},
        repeats=2,
        resources={"cpus": 1, "max_concurrent": 1},
    )
    result = run_cli(["run", str(spec), "--storage", str(tmp_path / "r")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = read_study(tmp_path / "r" / "tiny")
    trials = study.trials
    assert len(trials) == 4
    per_group = trials.groupby("group")
    assert per_group.size().tolist() == [2, 2]
    assert (per_group["config/optim.lr"].nunique() == 1).all()  # one draw per configuration
    assert (per_group["seed"].nunique() == 2).all()  # ... repeated over the seeds
    assert trials["config/optim.lr"].nunique() == 2
    # Trials ran one at a time: their wall-clock spans, from the epoch rows, never overlap.
    epochs = study.epochs
    spans = epochs.groupby("trial_id").apply(
        lambda e: (
            e["time/ended_at"].iloc[0] - pd.Timedelta(seconds=e["time/epoch_s"].iloc[0]),
            e["time/ended_at"].iloc[-1],
        ),
        include_groups=False,
    )
    ordered = sorted(spans.tolist())
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end - pd.Timedelta(seconds=0.05)
