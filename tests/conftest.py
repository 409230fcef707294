import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from .support import TINY_BASE, run_cli, write_spec
from .support.clusters import Cluster, s3_endpoint, two_node_cluster

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Real Ray studies shared by the tests that only read their results (each costs a Ray start).
@pytest.fixture(scope="session")
def grid_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed 2 x 2 grid on Ray (bundled data, 2 epochs), its two best scored on test."""
    return _run_study(
        tmp_path_factory.mktemp("grid"),
        name="grid",
        space={"optim.lr": [0.05, 0.01], "batch_size": [25, 50]},
        test_best=2,
    )


@pytest.fixture(scope="session")
def asha_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed Optuna (TPE, seed 1) + ASHA study on Ray: 8 trials of up to 6 epochs."""
    return _run_study(
        tmp_path_factory.mktemp("asha"),
        name="asha",
        base={**TINY_BASE, "epochs": 6},
        space={
            "optim.lr": {"type": "float", "low": 1e-5, "high": 0.1, "log": True},
            "optim.name": ["sgd", "adam"],
        },  # a list under Optuna is a categorical choice
        search={"algorithm": "optuna", "samples": 8, "seed": 1},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        resources={"cpus": 1, "max_concurrent": 2},
    )


def _run_study(root: Path, **fields: Any) -> Path:
    spec = write_spec(root, **fields)
    result = run_cli(["run", str(spec), "--storage", str(root / "r")], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # Nothing that is not news to someone who started a study: Optuna's study creation, Ray's
    # complaint about result files cifartune does not use, the resume hint of a finished study.
    for noise in ("A new study created", "Failed to fetch metrics", "continue it with"):
        assert noise not in result.stdout + result.stderr, noise
    return root / "r" / fields["name"]


# Where the libraries the suite drives keep their files: Ray's sessions, sockets and its
# `ray_current_cluster` registration; torch.compile's caches.
LIBRARY_TEMP_DIRS = ("RAY_TMPDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@pytest.fixture(scope="session", autouse=True)
def library_temp_dirs() -> Iterator[Path]:
    """One temporary directory for every file the libraries write outside a test's own
    directories (every Ray runtime the suite starts, compiled kernels), removed at the end:
    nothing of the suite's is left in the machine's /tmp/ray or caches."""
    root = Path(tempfile.mkdtemp(prefix="rt"))  # short: Ray's socket paths fit in 107 bytes
    saved = {name: os.environ.get(name) for name in LIBRARY_TEMP_DIRS}
    os.environ.update({name: str(root / name.lower()) for name in LIBRARY_TEMP_DIRS})
    os.environ["RAY_TMPDIR"] = str(root)
    try:
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(library_temp_dirs: Path) -> Iterator[Cluster]:
    """One two-node Ray cluster (with the Jobs API) and one S3 server for the whole session:
    the S3 variables are set before the nodes start, so their trials reach the server too."""
    with s3_endpoint() as endpoint, two_node_cluster() as cluster:
        yield replace(cluster, s3=endpoint)
