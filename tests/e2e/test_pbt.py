"""Population-based training on a real Ray study: killed mid-study and resumed, every trial's
epochs are each written once, none restarts from scratch, its exploits are in the lineage with
their donors' epochs, and `train --replay` trains the best trial's schedule again to the same
numbers; the report draws the population."""

import os
import signal
from collections import Counter

import numpy as np
import optuna
import pandas as pd
import pytest

from cifartune.store.lineage import final_values, lineage_schedule, read_lineage
from cifartune.store.optuna_mirror import open_storage
from cifartune.store.study_data import read_study

from ..support import (
    TINY_BASE,
    epoch_rows,
    epochs_so_far,
    run_cli,
    run_epochs,
    start_study,
    stopped_at_exit,
    wait_for,
    withdrawn_rows,
    write_spec,
)

pytestmark = pytest.mark.slow
MUTATIONS = {
    "optim.lr": {"type": "float", "low": 0.001, "high": 0.2, "log": True},
    "model.dropout": [0.0, 0.1, 0.2, 0.3],
}


def _pbt_spec(directory, **resources):
    """4 members of the momentum network, 6 epochs, meeting at epochs 2 and 4, where the bottom
    half takes the top half's state: 2 exploits at each barrier."""
    return write_spec(
        directory, name="pbt",
        base={**TINY_BASE, "epochs": 6, "optim": {"name": "momentum"},
              "data": {**TINY_BASE["data"], "train_subset": 500}},
        search={"algorithm": "random", "samples": 4, "seed": 0},
        scheduler={"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                   "mutations": MUTATIONS},
        resources={"cpus": 1, **resources},
    )  # fmt: skip


def _barrier_exploits(results):
    """How many members took another's state at each perturbation epoch."""
    return Counter(read_lineage(read_study(results).directory)["epoch"].astype(int))


def _progress(results):
    """Each trial's newest epoch on disk, from the file names alone."""
    newest = {}
    for file in (results / "epochs").glob("*/*.parquet"):
        epoch = int(file.name.split("-")[0])
        newest[file.parent.name] = max(newest.get(file.parent.name, 0), epoch)
    return newest


@pytest.fixture(scope="module")
def uninterrupted_exploits(tmp_path_factory):
    """The exploits per barrier of the study below, run to its end without interruption."""
    root = tmp_path_factory.mktemp("pbt-uninterrupted")
    result = run_cli(["run", str(_pbt_spec(root, max_concurrent=1)), "--storage", str(root / "r")])
    assert result.returncode == 0, result.stderr[-3000:]
    exploits = _barrier_exploits(root / "r" / "pbt")
    assert exploits == {2: 2, 4: 2}
    return exploits


def test_a_pbt_study_stopped_while_members_wait_at_a_barrier_meets_there_on_resume(
    tmp_path, uninterrupted_exploits
):
    # One member runs at a time: three wait at the second barrier (epoch 4) while the fourth
    # trains towards it; then the whole process group gets SIGTERM (`timeout`, Slurm).
    results = tmp_path / "r" / "pbt"
    driver = start_study(_pbt_spec(tmp_path, max_concurrent=1), tmp_path)
    with stopped_at_exit(driver):
        wait_for(lambda: sorted(_progress(results).values())[-3:] == [4, 4, 4])
        at_stop = _progress(results)
        os.killpg(driver.pid, signal.SIGTERM)
        _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert read_study(results).meta["state"] == "interrupted"
    before = epoch_rows(read_study(results).epochs)

    resumed = run_cli(["resume", str(results)], cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = read_study(results)
    assert study.meta["state"] == "completed", at_stop
    assert set(study.trials["state"]) == {"TERMINATED"}
    for _, rows in study.epochs.groupby("trial_id"):
        assert sorted(rows["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert before - withdrawn_rows(results) <= epoch_rows(study.epochs)
    # The population met at the barrier it was stopped at, and at every one an uninterrupted
    # run meets at, each exploit from a donor at the same epoch.
    assert _barrier_exploits(results) == uninterrupted_exploits, at_stop
    lineage = read_lineage(study.directory)
    assert (lineage["donor_epoch"] == lineage["epoch"]).all()


def indexed_epochs(study):
    return study.epochs.set_index(["trial_id", "epoch"])


def test_a_killed_pbt_study_resumes_its_population_and_replays_its_best_schedule(tmp_path):
    spec = write_spec(
        tmp_path, name="pbt", base={**TINY_BASE, "epochs": 6, "optim": {"name": "momentum"}},
        search={"algorithm": "random", "samples": 4, "seed": 0},
        scheduler={"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                   "mutations": MUTATIONS},
        resources={"cpus": 1, "max_concurrent": 2},
    )  # fmt: skip
    results = tmp_path / "r" / "pbt"
    driver = start_study(spec, tmp_path)
    # Killed once the population has met at its first barrier and some trial took another's.
    wait_for(lambda: (results / "lineage").is_dir() and len(epochs_so_far(results)) >= 9)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    wait_for(lambda: read_study(results).meta["state"] == "interrupted", timeout=120)
    before = epoch_rows(read_study(results).epochs)

    resumed = run_cli(["resume", str(results)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = read_study(results)
    assert study.meta["state"] == "completed"
    assert len(study.trials) == 4 and set(study.trials["state"]) == {"TERMINATED"}
    # Every trial's epochs, each once; the rows written before the kill are still there (in
    # their files or the committed table), but for those of an epoch in flight past its last
    # checkpoint (withdrawn, kept aside).
    for _, rows in study.epochs.groupby("trial_id"):
        assert sorted(rows["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert before - withdrawn_rows(results) <= epoch_rows(study.epochs)

    # The exploits: at perturbation epochs only, each from a donor at the same epoch.
    lineage = read_lineage(study.directory)
    assert not lineage.empty and set(lineage["epoch"]) <= {2, 4}
    assert (lineage["donor_epoch"] == lineage["epoch"]).all()
    assert (lineage["donor_trial_id"] != lineage["trial_id"]).all()
    assert set(lineage["donor_trial_id"]) <= set(study.trials["trial_id"])

    # The Optuna mirror: one trial per member, its exploits as an attribute.
    mirror = optuna.load_study(study_name="pbt", storage=open_storage(results))
    assert "a trial's params are the values it started with" in mirror.user_attrs["params"]
    mirrored = {t.user_attrs["trial_id"]: t for t in mirror.trials}
    assert sorted(mirrored) == sorted(study.trials["trial_id"])
    for trial_id, taken in lineage.sort_values("epoch").groupby("trial_id"):
        exploits = [f"{row.epoch} from trial {row.donor_trial_id}" for row in taken.itertuples()]
        assert mirrored[trial_id].user_attrs["exploits"] == ", ".join(exploits)

    # Every view names a member by the values in force at its best epoch (the trial table read
    # back); the mirror's params are the values it started with, its at_best_epoch attribute
    # the values in force.
    for trial in study.trials.to_dict("records"):
        at_best = indexed_epochs(study).loc[(trial["trial_id"], trial["best_epoch"])]
        mirrored_trial = mirrored[trial["trial_id"]]
        for key in MUTATIONS:
            assert trial[f"config/{key}"] == at_best[f"config/{key}"]
            assert mirrored_trial.params[key] == trial[f"start/{key}"]
        assert set(mirrored_trial.user_attrs["at_best_epoch"].split()) == {
            f"{key}={float(at_best[f'config/{key}'])}" for key in MUTATIONS
        }

    # status names the values in force at the best epoch, not the trial's first ones.
    top = study.trials.sort_values("best_metric", ascending=False).iloc[0]
    at_best = indexed_epochs(study).loc[(top["trial_id"], top["best_epoch"])]
    status = run_cli(["status", str(results)])
    assert f"optim.lr={at_best['config/optim.lr']:.4g}" in status.stdout.split()

    # The replay of the best trial trains its chain of trials' epochs again, to the same numbers;
    # RESULTS/TRIAL names another trial, here one that took another's state.
    best = str(final_values(study.epochs, "val/top1", "max").index[0])  # the best final model
    taker = str(lineage.sort_values("epoch")["trial_id"].iloc[-1])
    for where, trial in [(results, best), (results / taker, taker)]:
        out = tmp_path / f"replay-{trial}"
        replay = run_cli(["train", "--replay", str(where), "--out", str(out)])
        assert replay.returncode == 0, replay.stderr[-3000:]
        assert f"replaying trial {trial}" in replay.stdout
        chain = lineage_schedule(study.epochs, lineage, trial)
        indexed = indexed_epochs(study)
        want = pd.DataFrame([indexed.loc[(trainer, epoch)] for epoch, trainer in chain])
        got = run_epochs(out).sort_values("epoch", ignore_index=True)
        np.testing.assert_array_equal(got["lr"], want["lr"])
        np.testing.assert_allclose(got["train/loss"], want["train/loss"], rtol=1e-6)
        np.testing.assert_array_equal(got["config/model.dropout"], want["config/model.dropout"])

    report = run_cli(["report", str(results), "--out", str(tmp_path / "report")])
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "## Population-based training" in text
    assert f"`{best}`" in text
