"""Real components on loopback for the cluster tests, started once per test session and
stopped at its end: an S3 API server (moto) and a two-node Ray cluster. Each Ray start costs
seconds, so the tests share them."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import default_signals

RAY = str(Path(sys.executable).with_name("ray"))


def _start(args: list[str]) -> subprocess.Popen:
    # This venv's python first on PATH: a Ray Job's entrypoint (`python -m cifartune ...`) is a
    # shell command run by the head, as on a cluster whose image has cifartune installed.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
    # Own session: the test can stop exactly the processes it started (and not another cluster).
    return subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=default_signals,
    )


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
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


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class Cluster:
    address: str  # the GCS, for `cifartune run --address`
    s3: str = ""  # the S3 endpoint its nodes use


@contextmanager
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port, with the standard AWS variables pointing at it in this
    process and so in every process it starts (the Ray nodes included)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=default_signals,
    )
    endpoint = f"http://127.0.0.1:{port}"
    variables = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        _wait(lambda: _answers(endpoint), "the S3 server did not come up")
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


@contextmanager
def ray_head(*args: str) -> Iterator[subprocess.Popen]:
    """`ray start --head ARGS` in a temporary directory of its own: its `ray_current_cluster`
    registration, sessions and sockets go there (worker nodes take the head's), and are removed
    with it once the head is stopped, so nothing points a later `ray.init()` at a dead head."""
    # Short: Ray's socket paths under it must fit a Unix socket's 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rc")
    head = _start(["--head", "--temp-dir", temp_dir, *args])
    try:
        yield head
    finally:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def two_node_cluster() -> Iterator[Cluster]:
    """A head and a worker node, 1 CPU each."""
    address = f"127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    with ray_head("--port", port, "--num-cpus", "1", "--include-dashboard", "false"):
        _wait(lambda: _alive_nodes(address) == 1, "the head did not come up")
        worker = _start(["--address", address, "--num-cpus", "1"])
        try:
            _wait(lambda: _alive_nodes(address) == 2, "the worker node did not join")
            yield Cluster(address)
        finally:
            _stop(worker)


def _wait(predicate: Callable[[], bool], failure: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(failure)
        time.sleep(1)
