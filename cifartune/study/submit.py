"""`cifartune submit`: a study as a Ray Job, sent to a cluster's Jobs server (the head's
dashboard port, 8265).

The working directory (the project, with the spec inside it) travels to the cluster in the job's
runtime environment; the job's driver runs ``python -m cifartune run SPEC`` there on the head
node, where Ray sets RAY_ADDRESS, so the study joins the cluster (``study._init_ray``) and its
trials go to the worker nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifartune.errors import ConfigError
from cifartune.storage import is_uri

log = logging.getLogger(__name__)
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
# Never uploaded: environments, results and history are large (Ray refuses a working_dir over
# 500 MiB) and the cluster has its own; results come back through --storage instead.
EXCLUDES = [".venv", "results", "runs", ".git", "reports", "__pycache__", "*.egg-info"]
# Exit status of `submit --wait` for each final job status.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}


@dataclass(frozen=True)
class JobRequest:
    entrypoint: str
    runtime_env: dict[str, Any]
    study: str  # <storage>/<name>: where `cifartune status` finds the study


def jobs_address(address: str | None) -> str:
    """--address, else RAY_ADDRESS (as `ray job submit` does), else this machine's dashboard."""
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def prepare_job(
    spec_path: Path, working_dir: Path, storage: str | None, overrides: Sequence[str]
) -> JobRequest:
    """Check the spec here (a bad spec fails on the laptop, not on the cluster) and build the
    job: `cifartune run` on the spec's path inside the uploaded working directory."""
    from cifartune.config.validation import load_spec

    spec = load_spec(spec_path, list(overrides))
    root = working_dir.expanduser().resolve()
    try:
        relative = spec_path.expanduser().resolve().relative_to(root)
    except ValueError:
        raise ConfigError(
            f"spec {spec_path} is outside the working directory {root}, which is all that "
            "travels to the cluster; move the spec under it (e.g. studies/) or pass "
            "--working-dir with a directory that holds it"
        ) from None
    where = storage or spec.storage
    if not is_uri(where):
        if not Path(where).expanduser().is_absolute():
            raise ConfigError(
                f"storage = {where!r}: a relative path would put the results in the job's "
                "temporary copy of the working directory on the head node; pass --storage "
                "s3://BUCKET/PREFIX (or an absolute path that every node sees)"
            )
        where = str(Path(where).expanduser())
    command = [
        "python",
        "-m",
        "cifartune",
        "run",
        relative.as_posix(),
        "--storage",
        where,
        *(arg for override in overrides for arg in ("--set", override)),
    ]
    return JobRequest(
        entrypoint=shlex.join(command),
        runtime_env={"working_dir": str(root), "excludes": EXCLUDES},
        study=f"{where.rstrip('/')}/{spec.name}",
    )


@contextlib.contextmanager
def _api_server_address(address: str) -> Iterator[None]:
    """While the block runs, RAY_API_SERVER_ADDRESS is `address` (then as it was): Ray lets
    RAY_ADDRESS override the address a client is given, and RAY_API_SERVER_ADDRESS override
    both, so this is how an explicit --address wins. A client reads it once, when built."""
    saved = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = address
    try:
        yield
    finally:
        if saved is None:
            del os.environ[API_SERVER_ENV]
        else:
            os.environ[API_SERVER_ENV] = saved


def _client(address: str) -> Any:
    """A JobSubmissionClient for `address`, whatever RAY_ADDRESS says."""
    from ray.job_submission import JobSubmissionClient

    try:
        with _api_server_address(address):
            return JobSubmissionClient(address)
    except ConnectionError as exc:
        raise ConfigError(
            f"--address {address}: no Ray Jobs server answers there ({exc}); start the cluster "
            "(`ray up cluster.yaml`), forward its dashboard port (`ray dashboard cluster.yaml`) "
            "or pass the head's http://HOST:8265"
        ) from None


def submit(request: JobRequest, address: str) -> str:
    """Submit the job; return its id."""
    job_id: str = _client(address).submit_job(
        entrypoint=request.entrypoint,
        runtime_env=request.runtime_env,
        metadata={"cifartune_study": request.study},
    )
    log.info("submitted %s as job %s to %s", request.entrypoint, job_id, address)
    return job_id


def follow(address: str, job_id: str) -> Iterator[str]:
    """The job's log, chunk by chunk as it is written, until the job ends."""
    # tail_job_logs is an async generator (a websocket); drive it from this synchronous CLI.
    chunks = _client(address).tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(chunks))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(chunks.aclose())
        loop.close()


def outcome(address: str, job_id: str) -> tuple[str, int, str]:
    """The job's final status, the exit code that stands for it and Ray's message about it."""
    client = _client(address)
    # The log stream closes as the job ends; its status may lag that by a moment.
    while not (info := client.get_job_info(job_id)).status.is_terminal():
        time.sleep(0.5)
    status = str(info.status.value)
    return status, EXIT_CODES.get(status, 1), info.message or ""


def follow_commands(address: str, job_id: str, study: str) -> list[str]:
    """How to follow the job from another terminal."""
    return [
        f"ray job logs -f {job_id} --address {address}",
        f"cifartune status {study} --watch",
        f"ray job stop {job_id} --address {address}",
    ]
