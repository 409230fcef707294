"""A study's budget, on real Ray studies: a target reached mid-run stops the running trials after
their epoch and starts no other; a wall budget counts the time of a driver that was killed, so a
resume spends what is left (here nothing: the study ends at once, completed)."""

import json
import os
import signal

import pytest

from cifartune.store.study_data import read_study

from ..support import TINY_BASE, epochs_so_far, run_cli, start_study, wait_for, write_spec

pytestmark = pytest.mark.slow
SPACE = {"optim.lr": [0.05, 0.02, 0.01, 0.005]}


def test_a_target_reached_stops_the_running_trials_after_their_epoch_and_starts_no_other(
    tmp_path,
):
    spec = write_spec(
        tmp_path, name="target", base={**TINY_BASE, "epochs": 3}, space=SPACE,
        resources={"cpus": 1, "max_concurrent": 2}, budget={"target": {"val/loss": 100.0}},
    )  # fmt: skip
    result = run_cli(["run", str(spec), "--storage", str(tmp_path / "r")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # cifartune's lines only: none of Ray's empty "Trial ... completed. Last result:" for the
    # trials stopped before they started, which the log names as such.
    assert "Last result" not in result.stdout + result.stderr
    assert result.stderr.count("ends without training: the study stops") == 2
    study = read_study(tmp_path / "r" / "target")
    assert study.meta["state"] == "completed"
    assert study.meta["stop_reason"].startswith("budget: target val/loss 100 reached")
    trials = study.trials
    # The two trials running when the first epoch reached the target ended after their epoch;
    # the other two never started.
    assert set(trials["stop_reason"]) == {"budget"} and set(trials["state"]) == {"STOPPED"}
    assert sorted(trials["epochs_run"].tolist(), reverse=True)[:2] == [1, 1]
    assert len(study.epochs) == 2
    assert len(study.test) == 1  # the best were scored on the test set
    status = run_cli(["status", str(tmp_path / "r" / "target")]).stdout
    assert "stopped: budget: target val/loss 100 reached" in status
    assert "\nbudget: target val/loss 100 (best so far " in status  # completed: still shown


def test_a_wall_budget_counts_the_time_of_a_killed_driver(tmp_path):
    spec = write_spec(
        tmp_path, name="wall", base={**TINY_BASE, "epochs": 40}, space=SPACE,
        resources={"cpus": 1, "max_concurrent": 2}, budget={"wall": "1h"},
    )  # fmt: skip
    results = tmp_path / "r" / "wall"
    driver = start_study(spec, tmp_path)
    wait_for(lambda: len(epochs_so_far(results)) >= 2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    wait_for(lambda: read_study(results).meta["state"] == "interrupted", timeout=120)
    meta = json.loads((results / "study.json").read_text())
    (first,) = meta["runs"]
    assert first["until"] > first["started"]  # the killed driver's time, to its end
    trained = len(read_study(results).epochs)

    # The budget is now below what the killed driver spent: the resumed study trains nothing.
    resumed = run_cli(["resume", str(results), "--set", "budget.wall=1s"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = read_study(results)
    assert study.meta["state"] == "completed" and len(study.meta["runs"]) == 2
    assert study.meta["stop_reason"].startswith("budget: wall 1s reached")
    assert len(study.epochs) == trained  # no epoch trained after the resume
    assert set(study.trials["stop_reason"]) == {"budget"} and len(study.test) == 1
    # A completed study does not continue, whatever its budget: refused (not dropped), with a
    # command that trains more as a new study, which validates as it is.
    more = run_cli(["resume", str(results), "--set", "budget.wall=90s"], cwd=tmp_path)
    assert more.returncode == 2, more.stdout
    assert "study wall is completed (budget: wall 1s reached" in more.stderr
    assert "Traceback" not in more.stderr and len(more.stderr.strip().splitlines()) == 1
    suggested = more.stderr.split("as a new study: cifartune run ")[1].split()
    assert suggested[1:] == ["--set", "name=wall-more", "--set", "budget.wall=90s"]
    assert run_cli(["validate", *suggested], cwd=tmp_path).returncode == 0
    assert len(read_study(results).meta["runs"]) == 2  # nothing ran
    # What a resume may not change is refused: the study's design.
    refused = run_cli(["resume", str(results), "--set", "base.epochs=3"], cwd=tmp_path)
    assert refused.returncode == 2 and "resume changes only where the data lives" in (
        refused.stderr
    )
