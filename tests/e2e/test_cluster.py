"""The study beyond one machine, with real components on loopback: a two-node Ray cluster (a
head and a worker raylet started and stopped by the test) whose trials run on both nodes, the
fail-fast check for a trial no node can hold, `cifartune submit` to a head's Jobs server, and
the cluster launcher config (Ray's own schema, versions matching pyproject.toml)."""

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from cifartune.errors import ConfigError
from cifartune.store.study_data import read_study
from cifartune.study.cluster import NodeShape, NodeTypes, fit_error, launcher_node_types
from cifartune.study.submit import prepare_job

from ..support import REPO, TINY_BASE, default_signals, run_cli, write_spec
from ..support.clusters import _alive_nodes, _answers, _free_port, ray_head, two_node_cluster


@pytest.mark.slow
def test_study_runs_trials_on_both_nodes(tmp_path, ray_cluster):
    spec = write_spec(
        tmp_path,
        base={**TINY_BASE, "epochs": 3, "data": {**TINY_BASE["data"], "train_subset": 300}},
        space={"optim.lr": [0.05, 0.01]},
    )
    result = run_cli(
        ["run", str(spec), "--address", ray_cluster.address, "--storage", str(tmp_path / "r")],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # The local results path was checked from both nodes (they share this disk), then cleaned.
    assert not list((tmp_path / "r" / "tiny").glob("node-probe-*"))
    study = read_study(tmp_path / "r" / "tiny")
    assert study.meta["state"] == "completed" and study.meta["address"] == ray_cluster.address
    assert study.epochs["node_id"].nunique() == 2
    assert len(study.epochs) == 2 * 3


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _cluster_yaml()
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "aws"
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "cifartune" in setup
    assert any("boto3" in c for c in config["head_setup_commands"])  # the AWS autoscaler's
    assert {".venv", "results", "runs", ".git"} <= set(config["rsync_exclude"])
    gpu_types = [
        t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU")
    ]
    assert gpu_types, "cluster.yaml declares no GPU worker type"
    assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in gpu_types)
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    starts = "\n".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=disabled" not in starts
    assert shutil.which("ray") or Path(sys.executable).with_name("ray").exists()


def _pins() -> tuple[str, SpecifierSet]:
    """The Ray version pyproject.toml pins exactly, and the Python versions it accepts."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (ray,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray"]
    (pin,) = [s.version for s in ray.specifier if s.operator == "=="]
    return pin, SpecifierSet(project["requires-python"])


def _image_versions(image: str) -> tuple[str, str]:
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(cpu|gpu)", image)
    assert match, f"{image} is not one of Ray's official images"
    return match[1], f"3.{match[2]}"


def test_cluster_yaml_runs_the_ray_and_python_that_pyproject_asks_for():
    pin, pythons = _pins()
    docker = _cluster_yaml()["docker"]
    for image in (docker["head_image"], docker["worker_image"]):
        ray_version, python = _image_versions(image)
        assert ray_version == pin and python in pythons, image
    assert docker["worker_image"].endswith("-gpu")


def test_kuberay_rayjob_runs_a_study_into_object_storage():
    pin, pythons = _pins()
    job = yaml.safe_load((REPO / "deploy" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == pin
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    command = job["spec"]["entrypoint"].split()
    assert command[:4] == ["python", "-m", "cifartune", "run"]
    assert (REPO / command[4].removeprefix("/home/ray/cifartune/")).is_file()
    assert command[command.index("--storage") + 1].startswith("s3://")
    header = (REPO / "deploy" / "kuberay-rayjob.yaml").read_text()
    ray_version, python = _image_versions(re.search(r"FROM (\S+)", header)[1])
    assert ray_version == pin and python in pythons


def _cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


HEAD = NodeShape("node 10.0.0.1 [head]", 8, 0)


def test_a_trial_fits_a_node_type_the_autoscaler_may_start():
    types = launcher_node_types(_cluster_yaml(), "cluster.yaml")
    assert types is not None
    # No GPU node is alive yet, but cluster.yaml's GPU workers hold 4 trials of 0.25 GPU.
    assert fit_error(4, 0.25, [HEAD], types) is None
    assert fit_error(4, 0.25, [HEAD], None) is not None


def test_no_node_type_can_hold_the_trial():
    types = launcher_node_types(_cluster_yaml(), "cluster.yaml")
    message = fit_error(4, 2, [HEAD], types)
    assert message is not None
    assert "resources.cpus = 4, resources.gpus = 2 per trial" in message
    assert "node 10.0.0.1 [head] (8 CPUs, 0 GPUs)" in message
    assert "gpu_worker (16 CPUs, 1 GPUs, up to 4)" in message and "(cluster.yaml)" in message
    assert "--set resources.gpus=0" in message


def test_trials_need_one_node_that_has_both():
    # 8 CPUs on one node and a GPU on another do not make a place for a 2-CPU + 1-GPU trial.
    nodes = [HEAD, NodeShape("node 10.0.0.2", 1, 1)]
    assert fit_error(2, 1, nodes, None) is not None
    assert fit_error(1, 1, nodes, None) is None
    assert fit_error(1, 1, [HEAD], NodeTypes([NodeShape("gpu", 4, 1, -1)], "gcs")) is None


def test_node_types_without_resources_are_unknown():
    config = {
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 8}, "max_workers": 0},
            "worker": {"max_workers": 2},  # resources filled in by the provider at `ray up`
        },
    }
    assert launcher_node_types(config, "x") is None
    config["available_node_types"]["worker"]["resources"] = {"CPU": 4, "GPU": 1}
    types = launcher_node_types(config, "x")
    assert types is not None and [t.name for t in types.shapes] == ["head", "worker"]
    config["available_node_types"]["worker"]["max_workers"] = 0  # can never start
    types = launcher_node_types(config, "x")
    assert types is not None and [t.name for t in types.shapes] == ["head"]


@pytest.mark.slow
def test_a_trial_no_node_can_hold_stops_the_study_within_seconds(tmp_path):
    spec = write_spec(tmp_path, resources={"cpus": 1, "gpus": 1})
    started = time.monotonic()
    result = run_cli(
        ["run", str(spec), "--storage", str(tmp_path / "r")], cwd=tmp_path, timeout=180
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert elapsed < 60  # not a speed test: without the check the study waits forever
    assert "resources.cpus = 1, resources.gpus = 1 per trial" in result.stderr
    assert f"({os.cpu_count()} CPUs, 0 GPUs)" in result.stderr  # what this machine has
    assert "--set resources.gpus=0" in result.stderr
    assert not (tmp_path / "r" / "tiny").exists()  # a failed start leaves nothing behind


@pytest.fixture
def head_with_jobs_server():
    """A head whose dashboard (and Jobs server) listens on loopback, on ports of its own."""
    dashboard = _free_port()
    ports = ["--port", _free_port(), "--dashboard-agent-listen-port", _free_port()]
    ports += ["--ray-client-server-port", _free_port()]
    with ray_head(
        "--num-cpus", "2", "--dashboard-host", "127.0.0.1", "--dashboard-port", dashboard, *ports
    ):
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 120
        while not _answers(f"{url}/api/version") and time.time() < deadline:
            time.sleep(1)
        assert _answers(f"{url}/api/version"), "the head's Jobs server did not come up"
        yield url


@pytest.mark.slow
def test_a_plain_ray_init_starts_afresh_after_the_suites_cluster(tmp_path):
    """A cluster the suite started and stopped leaves no registration behind: a plain
    `ray.init()` in a new process (the suite's environment, a user's script) starts its own
    runtime instead of retrying a dead head's GCS forever."""
    with two_node_cluster() as cluster:
        assert _alive_nodes(cluster.address) == 2
    script = "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()"
    probe = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,  # a stale registration makes ray.init() retry the dead GCS every 5 s
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        preexec_fn=default_signals,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert "Failed to connect to GCS" not in probe.stderr


@pytest.mark.slow
def test_submit_runs_the_study_as_a_ray_job(tmp_path, head_with_jobs_server):
    spec = write_spec(tmp_path)
    result = run_cli(
        [
            "submit",
            spec.name,
            "--address",
            head_with_jobs_server,
            "--storage",
            str(tmp_path / "r"),
            "--set",
            "base.epochs=1",
            "--wait",
        ],
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ray job logs -f" in result.stdout and f"cifartune status {tmp_path}/r/tiny" in (
        result.stdout
    )
    assert "study tiny: results in" in result.stdout  # the job's own log, streamed
    study = read_study(tmp_path / "r" / "tiny")
    assert study.meta["state"] == "completed"
    assert len(study.trials) == 1 and len(study.epochs) == 1  # --set reached the job


def test_submit_refuses_what_cannot_work_on_a_cluster(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    spec = write_spec(project)
    overrides = ["base.epochs=1", "description=two words"]
    request = prepare_job(spec, project, "s3://bucket/x", overrides)
    assert request.entrypoint == (
        "python -m cifartune run tiny.yaml --storage s3://bucket/x "
        "--set base.epochs=1 --set 'description=two words'"
    )
    assert request.runtime_env["working_dir"] == str(project)
    assert {".venv", "results", ".git"} <= set(request.runtime_env["excludes"])
    with pytest.raises(ConfigError, match="outside the working directory"):
        prepare_job(write_spec(tmp_path), project, "s3://bucket/x", [])
    with pytest.raises(ConfigError, match=r"storage = 'results'.*--storage s3://"):
        prepare_job(spec, project, None, [])  # the spec's default: relative
    with pytest.raises(ConfigError, match=r"resources\.gpus"):
        prepare_job(spec, project, "s3://b/x", ["resources.gpus=-1"])  # checked here
