"""A real two-node Ray cluster on this machine: a head and a worker raylet, each started and
stopped by the test; a study joins it with --address and its trials run on both nodes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cifartune.results import read_study

from .helpers import REPO, run_cli
from .studies import TINY_BASE, write_spec

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
PORT = "6391"


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    # Own session: the test can stop exactly the processes it started (and not another cluster).
    return subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _alive_nodes(address: str) -> int:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import ray; ray.init(address='{address}', logging_level='ERROR');"
            "print(sum(n['Alive'] for n in ray.nodes()))",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        timeout=60,
    )
    return int(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else 0


@pytest.fixture
def two_node_cluster():
    address = f"127.0.0.1:{PORT}"
    head = _start(["--head", "--port", PORT, "--num-cpus", "1", "--include-dashboard", "false"])
    worker = None
    try:
        deadline = time.time() + 90
        while _alive_nodes(address) < 1 and time.time() < deadline:
            time.sleep(1)
        worker = _start(["--address", address, "--num-cpus", "1"])
        while _alive_nodes(address) < 2 and time.time() < deadline:
            time.sleep(1)
        assert _alive_nodes(address) == 2, "the two-node cluster did not come up"
        yield address
    finally:
        for process in (worker, head):
            if process is not None:
                _stop(process)


def test_study_runs_trials_on_both_nodes(tmp_path, two_node_cluster):
    spec = write_spec(
        tmp_path,
        base={**TINY_BASE, "epochs": 3, "data": {"train_subset": 300, "val_size": 100}},
        space={"optim.lr": [0.05, 0.01]},
    )
    result = run_cli(
        ["run", str(spec), "--address", two_node_cluster, "--storage", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "every node must see" in result.stderr  # results path is local to this machine
    study = read_study(tmp_path / "r" / "tiny")
    assert study.meta["state"] == "completed" and study.meta["address"] == two_node_cluster
    assert study.epochs["node_id"].nunique() == 2
    assert len(study.epochs) == 2 * 3


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "aws"
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "cifartune" in setup
    gpu_types = [
        t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU")
    ]
    assert gpu_types, "cluster.yaml declares no GPU worker type"
    assert shutil.which("ray") or Path(RAY).exists()
