"""Following a study: the terminal view (`status --watch`) and `cifartune dashboard`."""

import datetime as dt
import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.request

import pandas as pd
import pytest
from filelock import FileLock

from cifartune.storage import Location
from cifartune.store.epochs import EpochReader, epoch_path, trial_epochs_dir, write_epoch
from cifartune.store.layout import LOCK_FILE, STUDY_FILE
from cifartune.store.optuna_mirror import OptunaMirror
from cifartune.store.study_data import read_study
from cifartune.store.trial_states import read_trial_rows, write_trial_row
from cifartune.views.status import follow, render_status

from ..store.test_optuna_mirror import asha_study, grid_study
from ..support import (
    CHROMIUM,
    headless_chromium,
    run_cli,
    start_cli,
    stop_session,
    stopped_at_exit,
    wait_for,
)

NOW = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.UTC)  # fabricated studies start at 00:00


def test_status_view_counts_trials_epochs_best_and_eta(tmp_path):
    study = read_study(asha_study(tmp_path))
    text = render_status(study, NOW, live=True)
    assert text.startswith("study search [running]  started 2026-01-01 00:00 UTC, 10m 00s\n")
    assert (
        "trials: 8 planned | 2 completed, 2 early-stopped, 1 diverged, 1 error, 1 running, "
        "1 pending" in text
    )
    # 16 epochs done; left: the running trial's 2 and the pending trial's 4 (worst case)
    assert "epochs: 16 done / 22 planned at most (ASHA stops some early)" in text
    # as in the trial table: a diverged trial's epochs before it diverged count
    assert "best so far: val/top1 60.000 (trial t_00004, epoch 1) optim.lr=0.004642" in text
    assert "  t_00006  epoch 2/4  val/top1 32.000" in text
    seconds = study.epochs["time/epoch_s"].median()
    eta = round(6 * seconds)  # 6 epochs left, one trial running at a time
    assert f"ETA: at most {eta // 60}m {eta % 60:02d}s (6 epochs left" in text


def test_status_view_of_a_finished_grid_study_has_no_eta(tmp_path):
    study = read_study(grid_study(tmp_path))
    text = render_status(study, NOW, live=False)
    assert "[completed]" in text and "trials: 8 planned | 8 completed" in text
    assert "epochs: 24 done / 24 planned  [" + "#" * 30 + "] 100%" in text
    assert "variant=std optim.lr=0.1" in text and "ETA" not in text


def test_status_view_before_any_trial_reported(tmp_path):
    results = grid_study(tmp_path)
    shutil.rmtree(results / "epochs")
    shutil.rmtree(results / "trials")
    text = render_status(read_study(results), NOW, live=True)
    assert "trials: 8 planned | 8 not started" in text
    assert "epochs: 0 done / 24 planned  [" + "." * 30 + "] 0%" in text
    assert "ETA: after the first epoch" in text and "best so far" not in text


def test_follow_redraws_until_the_study_stops(tmp_path):
    results = asha_study(tmp_path)
    meta = json.loads((results / STUDY_FILE).read_text())
    meta["host"] = socket.gethostname()  # a live driver on this host holds the lock
    (results / STUDY_FILE).write_text(json.dumps(meta))
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        (results / STUDY_FILE).write_text(json.dumps({**meta, "state": "completed"}))

    with FileLock(str(results / LOCK_FILE)):
        frames = list(follow(results, interval=0.5, sleep=sleep, clock=lambda: NOW))
    assert sleeps == [0.5] and len(frames) == 2
    assert "[running]" in frames[0] and "ETA" in frames[0]
    assert "[completed]" in frames[1] and "ETA" not in frames[1]


def test_follow_stops_when_the_driver_is_gone(tmp_path):
    frames = list(follow(asha_study(tmp_path), sleep=pytest.fail))  # no driver holds the lock
    assert len(frames) == 1 and "[driver gone]" in frames[0]


def test_status_watch_command_exits_0_when_the_study_is_over(tmp_path):
    out = run_cli(["status", "--watch", str(grid_study(tmp_path)), "--interval", "0.1"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("\x1b[H\x1b[2Jstudy grid [completed]")


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _page_text(url, profile):
    dom = subprocess.run(
        headless_chromium(profile, "--virtual-time-budget=5000", "--dump-dom", url),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def start_dashboard(results, *extra):
    """`cifartune dashboard` on a free port; returns the process and the study page's URL.
    Callers stop it with `stopped_at_exit`, whatever the test's outcome."""
    process = start_cli(["dashboard", str(results), "--port", "0", *extra])
    line = process.stdout.readline()  # printed once the port is bound
    match = re.search(r"(http://127\.0\.0\.1:\d+)(/dashboard/studies/\d+)", line)
    if match is None:
        stop_session(process)
        raise AssertionError(f"no URL in {line!r}; stderr: {process.stderr.read()}")
    return process, match.group(1), match.group(1) + match.group(2)


def stop_dashboard(process, signum=signal.SIGTERM):
    process.send_signal(signum)
    assert process.wait(timeout=30) == 0, process.stderr.read()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_dashboard_serves_the_study_follows_new_epochs_and_stops_cleanly(tmp_path):
    results = asha_study(tmp_path)  # no journal yet: the command builds it from Parquet
    process, root, page = start_dashboard(results)
    with stopped_at_exit(process):
        (summary,) = _get(root + "/api/studies")["study_summaries"]
        assert summary["study_name"] == "search" and summary["directions"] == ["maximize"]
        detail = _get(f"{root}/api/studies/{summary['study_id']}")
        states = pd.Series([t["state"] for t in detail["trials"]]).value_counts().to_dict()
        assert states == {"Complete": 2, "Pruned": 2, "Fail": 2, "Running": 1, "Waiting": 1}
        assert detail["best_trials"][0]["values"] == [53.0]

        # The study goes on (another process writes the storage): the dashboard follows.
        data = read_study(results)
        row = data.trials.set_index("trial_id").loc["t_00006"].to_dict()
        epochs = data.epochs[data.epochs["trial_id"] == "t_00006"]
        extra = epochs.tail(1).assign(epoch=3, **{"val/top1": 70.0})
        mirror = OptunaMirror(results, {"name": "search", **data.spec})
        mirror.update(
            {**row, "trial_id": "t_00006", "state": "TERMINATED", "stop_reason": "early-stopped"},
            pd.concat([epochs, extra]).to_dict("records"),
        )

        def trial_6():
            detail = _get(f"{root}/api/studies/{summary['study_id']}")
            return next(t for t in detail["trials"] if t["number"] == 6)

        wait_for(lambda: trial_6()["state"] == "Pruned", timeout=30)  # its cache lives 2 s
        trial = trial_6()
        assert trial["intermediate_values"][-1] == {"step": 3, "value": 70.0}

        text = _page_text(page, tmp_path / "profile")
        assert "search" in text and "Best Trial (number=2)" in text and "trial #6" in text
        assert not re.search(r"error|failed to", text, re.I), text[:2000]
        stop_dashboard(process)


def test_dashboard_stops_with_ctrl_c_and_refuses_a_busy_port(tmp_path):
    results = grid_study(tmp_path)
    process, root, _ = start_dashboard(results)
    with stopped_at_exit(process):
        port = root.rsplit(":", 1)[1]
        out = run_cli(["dashboard", str(results), "--port", port])
        assert out.returncode == 2 and f"--port {port}" in out.stderr
        assert "pass another --port" in out.stderr
        stop_dashboard(process, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_dashboard_on_a_running_study(tmp_path):
    """Acceptance: the dashboard serves a study's trials while the study runs on Ray."""
    import optuna

    from cifartune.store.optuna_mirror import open_storage

    from ..support import TINY_BASE, start_study, write_spec

    spec = write_spec(
        tmp_path,
        name="live",
        # Long enough to still run once the page is read, however fast the machine: 40 epochs
        # of a tiny trial took 6 s once trials got cheaper, and trial 0 had finished by then.
        # The study is interrupted below, so the test does not wait for these epochs.
        base={**TINY_BASE, "epochs": 2000},
        space={"optim.lr": [0.05, 0.01]},
        resources={"cpus": 1, "max_concurrent": 1},
    )
    results = tmp_path / "r" / "live"
    with stopped_at_exit(start_study(spec, tmp_path)) as study:

        def running_in_journal():
            if not (results / "optuna.journal").exists():
                return False
            storage = open_storage(results)
            # The journal file exists a moment before the study is created in it.
            if "live" not in {s.study_name for s in storage.get_all_studies()}:
                return False
            trials = optuna.load_study(study_name="live", storage=storage).get_trials(
                states=[optuna.trial.TrialState.RUNNING]
            )
            return bool(trials) and bool(trials[0].intermediate_values)

        wait_for(running_in_journal, timeout=300)
        process, root, page = start_dashboard(results)
        with stopped_at_exit(process):
            detail = _get(root + "/api/studies/0")
            assert "Running" in {t["state"] for t in detail["trials"]}
            text = _page_text(page + "/trials", tmp_path / "profile")  # the trial list
            assert "live (id=0)" in text and "Trial 0 Running" in text
            # No error banner (the trial's own `error` attribute is null while it runs).
            assert not re.search(r"failed to|\berror\b(?!\s+null)", text, re.I), text[:2000]
            stop_dashboard(process)
        assert study.poll() is None, "the study ended before the dashboard was read"
        study.send_signal(signal.SIGINT)
        study.communicate(timeout=120)


def test_status_of_a_dead_drivers_study_agrees_with_its_epoch_files(tmp_path):
    results = asha_study(tmp_path)
    # The running trial wrote an epoch after the trial table's last write, then its driver
    # died (a pid that is gone, on this host, its lock free).
    folder = trial_epochs_dir(Location.of(results), "t_00006")
    newer = {**EpochReader().rows(folder)[-1], "epoch": 3, "val/top1": 70.0}
    write_epoch(newer, epoch_path(folder, 3, "cd"))
    meta = json.loads((results / STUDY_FILE).read_text())
    meta.update(host=socket.gethostname(), pid=2**22 + 1)
    (results / STUDY_FILE).write_text(json.dumps(meta))
    out = run_cli(["status", str(results)]).stdout
    assert "epochs done: 17" in out
    assert "best so far: val/top1 70.000 (trial t_00006, epoch 3)" in out  # not the table's 60
    assert "running" not in out.split("trials:", 1)[1].split("\n", 1)[0]  # none runs any more
    text = render_status(read_study(results), NOW, live=False)
    assert "best so far: val/top1 70.000 (trial t_00006" in text and "running:" not in text
    assert "2 interrupted" in text  # the running and the pending trial


def test_eta_counts_measured_start_ups_and_the_trials_running_at_once(tmp_path):
    results = asha_study(tmp_path)
    trials = read_trial_rows(Location.of(results))
    epochs = read_study(results).epochs
    first = epochs.groupby("trial_id").first()
    began = first["time/ended_at"] - pd.to_timedelta(first["time/epoch_s"], unit="s")
    # Each trial began its first epoch 5 s after Ray started it; two trials run now.
    trials["started_at"] = trials["trial_id"].map(began - pd.Timedelta(seconds=5))
    trials.loc[trials["trial_id"] == "t_00005", ["state", "stop_reason"]] = ["RUNNING", "running"]
    for row in trials.to_dict("records"):  # each trial's next row, as the driver writes it
        write_trial_row(Location.of(results), row, int(row["seq"]) + 1)
    text = render_status(read_study(results), NOW, live=True)
    seconds = epochs["time/epoch_s"].median()
    left = 2 + 4 + 3  # t_00006's 2, the pending trial's 4, t_00005's 3 (worst case)
    eta = round((left * seconds + 1 * 5.0) / 2)
    assert "1 trial start(s) at 5.0 s; 2 trial(s) running at once)" in text
    assert f"ETA: at most {eta // 60}m {eta % 60:02d}s ({left} epochs left" in text


def test_watch_counts_as_running_only_the_trials_still_training(tmp_path):
    # The trial table lags behind the epoch rows: two trials whose last epoch is written still
    # say RUNNING there, on a machine of 2 CPUs (1 a trial) with three trials training.
    results = asha_study(tmp_path)
    meta = json.loads((results / STUDY_FILE).read_text())
    (results / STUDY_FILE).write_text(json.dumps({**meta, "hardware": {"cpus": 2}}))
    trials = read_trial_rows(Location.of(results))
    lagging = trials["trial_id"].isin(["t_00000", "t_00002", "t_00003", "t_00005"])
    trials.loc[lagging, ["state", "stop_reason"]] = ["RUNNING", "running"]
    for row in trials[lagging].to_dict("records"):
        write_trial_row(Location.of(results), row, int(row["seq"]) + 1)
    text = render_status(read_study(results), NOW, live=True)
    running = text.split("running:\n")[1].split("ETA")[0]
    assert "t_00000" not in running and "t_00002" not in running  # 4/4 epochs: done
    assert {"t_00003", "t_00005", "t_00006"} == set(re.findall(r"t_\d+", running))
    assert "trials: 8 planned | 3 running, 2 completed, 1 early-stopped" in text
    assert "3 trial(s) running" not in text and "2 trial(s) running at once)" in text
