"""Where the data lives: $CIFARTUNE_DATA or a per-user cache, a download through torchvision
(served on loopback here), an object-store mirror (a real S3 API server on loopback), and a
bad location refused before anything is written."""

import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from cifartune.cli.main import main
from cifartune.config.spec import spec_hash
from cifartune.config.trial import build_trial_config
from cifartune.config.validation import build_spec
from cifartune.engine.data import describe_source, load_arrays
from cifartune.errors import DataError

from ..support import (
    REPO,
    TINY_BASE,
    fabricate_study,
    run_cli,
    synthetic_arrays,
    write_mirror,
    write_spec,
)


@pytest.fixture
def no_data_env(tmp_path, monkeypatch):
    """No CIFARTUNE_DATA, and a per-user cache that is empty (never the real one)."""
    monkeypatch.delenv("CIFARTUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_shipped_specs_name_no_machine_path_and_run_on_cifartune_data(
    tmp_path, no_data_env, capsys, monkeypatch
):
    # As many images as the largest shipped CPU study asks for (validate checks the sizes).
    mirror = write_mirror(tmp_path / "mirror", synthetic_arrays(7000, 100))
    monkeypatch.setenv("CIFARTUNE_DATA", str(mirror))
    for path in sorted((REPO / "studies").glob("*.yaml")):
        assert "shared" not in path.read_text(), path
        assert main(["validate", str(path)]) == 0, path
        expected = "bundled slice" if path.stem == "smoke" else f"read from {mirror} (mirror)"
        assert expected in capsys.readouterr().out, path
    out = tmp_path / "run"
    small = ["--set", "data.val_size=100", "--set", "data.train_subset=300"]
    train = run_cli(
        ["train", "--set", "epochs=1", *small, "--out", str(out)],
        CIFARTUNE_DATA=str(mirror),
        **no_data_env,
    )
    assert train.returncode == 0, train.stderr
    assert "completed: 1 epochs" in train.stdout


def test_no_data_with_downloads_off_exits_2_before_anything_is_written(tmp_path, no_data_env):
    spec = write_spec(tmp_path, name="nodata", base={**TINY_BASE, "data": {"download": False}})
    storage = tmp_path / "r"
    for command in (["validate", str(spec)], ["run", str(spec), "--storage", str(storage)]):
        result = run_cli(command, cwd=tmp_path, **no_data_env)
        assert result.returncode == 2, result.stderr
        assert "data.dir is unset" in result.stderr and "CIFARTUNE_DATA" in result.stderr
        assert "data.download" in result.stderr and "Traceback" not in result.stderr
    assert not storage.exists()
    named = build_trial_config({}, {"data.dir": str(tmp_path / "nowhere"), "data.download": False})
    with pytest.raises(DataError, match=r"data\.dir = '.*nowhere'.*holds no CIFAR-10"):
        describe_source(named.data)


def test_where_the_data_lives_is_not_part_of_the_study(tmp_path):
    tree = {"name": "s", "base": {"epochs": 2, "data": {"dir": "/a"}}}
    moved = {"name": "s", "base": {"epochs": 2, "data": {"dir": "/b", "download": False}}}
    changed = {"name": "s", "base": {"epochs": 3, "data": {"dir": "/a"}}}
    assert spec_hash(build_spec(tree)) == spec_hash(build_spec(moved))
    assert spec_hash(build_spec(tree)) != spec_hash(build_spec(changed))
    study = fabricate_study(
        tmp_path, {**tree, "base": {**TINY_BASE}}, {"t1": ({}, [10.0], "RUNNING", False)}, "running"
    )
    refused = run_cli(["resume", str(study), "--set", "base.epochs=9"])
    assert refused.returncode == 2 and "only where the data lives" in refused.stderr


@pytest.mark.slow
def test_a_failed_start_leaves_nothing_and_the_corrected_run_works(tmp_path):
    good = write_mirror(tmp_path / "good", synthetic_arrays(400, 100))
    bad = write_mirror(tmp_path / "bad", synthetic_arrays(400, 100))
    (bad / "test.npz").write_bytes(b"PK truncated")  # passes the cheap check, fails to load
    base = {**TINY_BASE, "data": {**TINY_BASE["data"], "source": "auto", "dir": str(bad)}}
    spec = write_spec(tmp_path, base=base)
    storage = tmp_path / "r"
    failed = run_cli(["run", str(spec), "--storage", str(storage)], cwd=tmp_path)
    assert failed.returncode == 2 and "test.npz" in failed.stderr
    assert not (storage / "tiny").exists()
    fixed = run_cli(
        ["run", str(spec), "--storage", str(storage), "--set", f"base.data.dir={good}"],
        cwd=tmp_path,
    )
    assert fixed.returncode == 0, fixed.stderr


def _cifar_archive(root):
    """A small archive in CIFAR-10's python format, and the md5s torchvision checks."""
    folder = "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    files = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(20)],
        }
        files[name] = pickle.dumps(batch)
    files["batches.meta"] = pickle.dumps({"label_names": [str(i) for i in range(10)]})
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    md5 = {name: hashlib.md5(payload).hexdigest() for name, payload in files.items()}
    return archive, md5, hashlib.md5(archive.read_bytes()).hexdigest()


def test_torchvision_download_happens_once_for_concurrent_loaders(tmp_path, no_data_env):
    served = tmp_path / "served"
    served.mkdir()
    archive, md5, archive_md5 = _cifar_archive(served)
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Method") != "HEAD":  # torchvision's redirect probe
                requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    script = f"""
from torchvision import datasets
C = datasets.CIFAR10
C.url, C.tgz_md5 = {url!r}, {archive_md5!r}
md5 = {md5!r}
C.train_list = [[f"data_batch_{{i}}", md5[f"data_batch_{{i}}"]] for i in range(1, 6)]
C.test_list = [["test_batch", md5["test_batch"]]]
C.meta = {{**C.meta, "md5": md5["batches.meta"]}}
from cifartune.cli.main import main
from cifartune.config.trial import build_trial_config
from cifartune.engine.data import load_arrays
arrays = load_arrays(build_trial_config({{}}, {{"data.source": "torchvision"}}).data)
print(len(arrays.train_labels), len(arrays.test_labels))
"""
    env = {**os.environ, **no_data_env}
    try:
        loaders = [
            subprocess.Popen(
                [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120)[0] for p in loaders]
    finally:
        server.shutdown()
    assert all(p.returncode == 0 for p in loaders)
    assert all(out.strip().splitlines()[-1] == "100 20" for out in outputs), outputs
    assert requests == [f"/{archive.name}"]  # one download for both
    assert (tmp_path / "cache" / "cifartune" / "cifar10" / "cifar-10-batches-py").is_dir()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3 API server (moto) on loopback, with the standard AWS variables pointing at it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield endpoint
    server.terminate()
    server.wait(timeout=30)


def test_an_object_store_mirror_is_read_through_pyarrow(tmp_path, s3_server):
    from pyarrow import fs

    mirror = write_mirror(tmp_path / "mirror", synthetic_arrays(60, 20))
    store = fs.S3FileSystem(
        endpoint_override=s3_server, region="us-east-1", allow_bucket_creation=True
    )
    store.create_dir("team-data")
    for name in ("train.npz", "test.npz"):
        with store.open_output_stream(f"team-data/cifar10/{name}") as out:
            out.write((mirror / name).read_bytes())
    data = build_trial_config({}, {"data.dir": "s3://team-data/cifar10"}).data
    assert describe_source(data) == "CIFAR-10 read from s3://team-data/cifar10 (mirror)"
    arrays = load_arrays(data)
    np.testing.assert_array_equal(arrays.train_images, synthetic_arrays(60, 20).train_images)
    missing = build_trial_config({}, {"data.dir": "s3://team-data/none"}).data
    with pytest.raises(DataError, match="object-store location must hold a mirror"):
        describe_source(missing)
