"""A study whose results live in an object store: a real S3 API server (moto) and a real
two-node Ray cluster on loopback, started and stopped by the test. Run, kill, resume, status and
report all go through s3://; nothing lands in a local folder named after the URI."""

import os
import signal
from pathlib import Path

import pytest

from cifartune.store.study_data import read_study

from ..support import TINY_BASE, epochs_so_far, run_cli, start_cli, wait_for, write_spec

pytestmark = pytest.mark.slow


def test_a_study_on_two_nodes_lives_in_s3_through_kill_and_resume(tmp_path, ray_cluster):
    from pyarrow import fs

    store = fs.S3FileSystem(endpoint_override=ray_cluster.s3, allow_bucket_creation=True)
    store.create_dir("lab")
    spec = write_spec(
        tmp_path,
        base={**TINY_BASE, "epochs": 4, "data": {**TINY_BASE["data"], "train_subset": 300}},
        space={"optim.lr": [0.05, 0.01]},
    )
    results = "s3://lab/studies/tiny"
    driver = start_cli(
        ["run", str(spec), "--address", ray_cluster.address, "--storage", "s3://lab/studies"],
        tmp_path,
    )
    wait_for(lambda: len(epochs_so_far(results)) >= 2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    # The command is killed outright; the study's driver, a child in a session of its own,
    # gets SIGTERM when its parent dies and ends the study interrupted.
    wait_for(lambda: read_study(results).meta["state"] == "interrupted", timeout=120)

    resumed = run_cli(["resume", results, "--address", ray_cluster.address], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    study = read_study(results)
    assert study.meta["state"] == "completed"
    assert (
        sorted(study.epochs.groupby("trial_id")["epoch"].apply(list).tolist()) == [[1, 2, 3, 4]] * 2
    )
    assert study.epochs["node_id"].nunique() == 2  # trials ran on both nodes
    assert len(study.test) == 1

    status = run_cli(["status", results])
    assert status.returncode == 0 and "[completed]" in status.stdout, status.stderr
    report = run_cli(["report", results, "--out", str(tmp_path / "report")])
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.html").is_file()
    assert not list(Path(tmp_path).rglob("s3:*")) and not Path("s3:").exists()
