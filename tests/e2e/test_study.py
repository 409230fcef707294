"""Studies on a real local Ray runtime (small data, CPU)."""

import os
import signal
from dataclasses import replace

import pytest

from cifartune.store.study_data import read_study

from ..support import TINY_BASE, epochs_so_far, run_cli, start_study, wait_for, write_spec


@pytest.mark.slow
def test_grid_study_writes_one_row_per_trial_epoch(grid_study):
    study = read_study(grid_study)
    assert study.meta["state"] == "completed"
    epochs, trials = study.epochs, study.trials
    assert len(trials) == 4 and set(trials["stop_reason"]) == {"completed"}
    assert sorted(epochs.groupby("trial_id")["epoch"].apply(list).tolist()) == [[1, 2]] * 4
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(zip(trials["config/optim.lr"], trials["config/batch_size"], strict=True)) == {
        (0.05, 25),
        (0.05, 50),
        (0.01, 25),
        (0.01, 50),
    }
    # The trial table agrees with the epoch rows.
    for trial in trials.itertuples():
        rows = epochs[epochs["trial_id"] == trial.trial_id]
        assert trial.best_metric == rows["val/top1"].max()
    # The two best configurations were scored once each on the test set, from their best epoch.
    assert len(study.test) == 2 and study.test["trial_id"].is_unique
    assert study.test.iloc[0]["trial_id"] == trials.loc[trials["best_metric"].idxmax(), "trial_id"]
    scored = study.test.merge(trials, on="trial_id")
    assert (scored["epoch"] == scored["best_epoch"]).all()
    assert (scored["val/top1"] == scored["best_metric"]).all()
    status = run_cli(["status", str(grid_study)])
    assert status.returncode == 0 and "4 completed" in status.stdout


@pytest.mark.slow
def test_optuna_asha_study_stops_trials_early(asha_study):
    study = read_study(asha_study)
    trials, epochs = study.trials, study.epochs
    assert len(trials) == 8
    assert (trials["stop_reason"] == "early-stopped").any()
    assert (trials["stop_reason"] == "completed").any()
    # Optuna's TPE sampler (seed 1) drew them: replaying it gives the same configurations.
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    replay = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    space = {
        "optim.lr": FloatDistribution(1e-5, 0.1, log=True),
        "optim.name": CategoricalDistribution(["sgd", "adam"]),
    }
    drawn = [replay.ask(fixed_distributions=space).params for _ in range(8)]
    assert sorted((round(d["optim.lr"], 12), d["optim.name"]) for d in drawn) == sorted(
        zip(trials["config/optim.lr"].round(12), trials["config/optim.name"], strict=True)
    )
    per_trial = epochs.groupby("trial_id")["epoch"].apply(list)
    for trial in trials.itertuples():
        assert per_trial[trial.trial_id] == list(range(1, trial.epochs_run + 1))
    assert len(epochs) < 8 * 6  # ASHA saved trial-epochs


@pytest.mark.slow
def test_the_searcher_and_the_optuna_mirror_agree_on_every_trial(asha_study):
    # What TPE samples from (the searcher's own Optuna study, as Ray saved it at the end) and
    # what the dashboard shows (the mirror) are one study: the same states, the same values,
    # per-epoch values at their epoch.
    import optuna

    from cifartune.store.optuna_mirror import open_storage
    from cifartune.study.epoch_search import EpochOptunaSearch

    searcher = EpochOptunaSearch(metric="val/top1", mode="max", max_epochs=1)
    searcher.restore_from_dir(str(asha_study / "ray"))
    told = {
        ray_id: searcher._ot_study.trials[trial.number]
        for ray_id, trial in searcher._ot_trials.items()
    }
    mirrored = {
        t.user_attrs["trial_id"]: t
        for t in optuna.load_study(study_name="asha", storage=open_storage(asha_study)).trials
    }
    assert sorted(told) == sorted(mirrored) and len(told) == 8
    states = set()
    for trial_id, searched in told.items():
        mirror = mirrored[trial_id]
        assert (searched.state, searched.value) == (mirror.state, mirror.value), trial_id
        assert searched.intermediate_values == mirror.intermediate_values, trial_id
        states.add(searched.state)
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states


def test_dry_run_counts_and_starts_nothing(tmp_path):
    spec = write_spec(
        tmp_path,
        space={"optim.lr": [0.1, 0.01, 0.001], "batch_size": [25, 50]},
        variants={"a": {}, "b": {"model.dropout": 0.5}},
        repeats=2,
    )
    result = run_cli(["run", str(spec), "--dry-run", "--storage", str(tmp_path / "r")])
    assert result.returncode == 0, result.stderr
    assert "12 configuration(s) x 2 repeat(s) (seeds) x 1 sample(s) = 24 trials" in result.stdout
    assert "worst case 48 trial-epochs" in result.stdout
    assert not (tmp_path / "r").exists()


def test_dry_run_explains_lists_under_optuna(tmp_path):
    spec = write_spec(
        tmp_path,
        space={"optim.lr": [0.1, 0.01], "model.dropout": {"type": "float", "low": 0, "high": 0.5}},
        search={"algorithm": "optuna", "samples": 5},
        scheduler={"name": "asha", "grace_period": 1},
    )
    result = run_cli(["run", str(spec), "--dry-run"])
    assert "lists (and variants) are categorical choices" in result.stdout
    assert "5 trials sampled by Optuna" in result.stdout
    assert "ASHA: rungs at epochs [1]" in result.stdout


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint(tmp_path):
    spec = write_spec(
        tmp_path,
        base={**TINY_BASE, "epochs": 8, "data": {**TINY_BASE["data"], "train_subset": 400}},
        retries=2,
    )
    results = tmp_path / "r" / "tiny"
    driver = start_study(spec, tmp_path)
    wait_for(lambda: len(epochs_so_far(results)) >= 3)
    victim = int(epochs_so_far(results)["pid"].iloc[-1])
    os.kill(victim, signal.SIGKILL)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    study = read_study(results)
    epochs = study.epochs
    assert epochs["epoch"].tolist() == list(range(1, 9))
    pids = epochs["pid"].tolist()
    assert pids[0] == victim and pids[-1] != victim  # early epochs kept, later ones from the retry
    assert (
        study.trials.iloc[0]["retries"] == 1 and study.trials.iloc[0]["stop_reason"] == "completed"
    )


def skewed_mirror(directory):
    """A mirror whose class 9 has only 25 training images: a validation split of 100 leaves 15,
    so a stratified subset of 30 per class fails inside the trial (validate only sees totals)."""
    import numpy as np

    from ..support import synthetic_arrays, write_mirror

    arrays = synthetic_arrays(n_train=800, n_test=100)
    labels = np.arange(800) % 9
    labels[:25] = 9
    return write_mirror(directory, replace(arrays, train_labels=labels))


@pytest.mark.slow
def test_a_study_whose_every_trial_failed_fails_without_retrying_them(tmp_path):
    data = {"dir": str(skewed_mirror(tmp_path / "mirror")), "val_size": 100, "train_subset": 300}
    spec = write_spec(
        tmp_path, base={**TINY_BASE, "data": data}, space={"optim.lr": [0.1, 0.01]}, retries=2
    )
    assert run_cli(["validate", str(spec)]).returncode == 0  # only the trials can see it
    result = run_cli(["run", str(spec), "--storage", str(tmp_path / "r")], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "study failed: every trial failed" in result.stderr
    assert "2 of 2 trials: DataError: " in result.stderr and "class 9" in result.stderr
    study = read_study(tmp_path / "r" / "tiny")
    assert study.meta["state"] == "failed" and "DataError" in study.meta["error"]
    assert set(study.trials["stop_reason"]) == {"error"}
    assert (study.trials["retries"] == 0).all()  # no retry can fix a data error: none was made
    status = run_cli(["status", str(tmp_path / "r" / "tiny")])
    assert "[failed]" in status.stdout and "most common error: 2 of 2 trials" in status.stdout
    again = run_cli(["resume", str(tmp_path / "r" / "tiny")], cwd=tmp_path)
    assert again.returncode == 1 and "already failed" in again.stdout
    # --restart-errored reruns errors a retry might fix; these would fail the same way.
    rerun = run_cli(["resume", str(tmp_path / "r" / "tiny"), "--restart-errored"], cwd=tmp_path)
    assert rerun.returncode == 1, rerun.stderr
    trials = read_study(tmp_path / "r" / "tiny").trials
    assert set(trials["stop_reason"]) == {"error"} and (trials["epochs_run"] == 0).all()


def test_the_command_a_user_starts_imports_no_torch():
    # It checks the spec and the data and hands the study to its supervised child, which
    # imports torch itself: a torch import here (1.7 s) would delay every run and resume.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cifartune.cli.main, cifartune.cli.study\n"
        "from cifartune.engine.data import describe_source\n"
        "from cifartune.store.layout import STUDY_FILE\n"
        "from cifartune.study.signals import stop_on_signals\n"
        "from cifartune.config.validation import load_spec\n"
        "from cifartune.config.resolved import resolve\n"
        "from cifartune.study.driver import run_study, study_directory\n"
        "from cifartune.study.supervise import run_supervised\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
