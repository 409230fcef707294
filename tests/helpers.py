"""Shared test fixtures: small generated datasets, quick configs, a CLI runner."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from cifartune.config.trial import build_trial_config
from cifartune.engine.data import CifarArrays
from cifartune.study.supervise import session_processes

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "data" / "cifar10"


def synthetic_arrays(n_train: int = 400, n_test: int = 100, seed: int = 0) -> CifarArrays:
    """Random uint8 images whose labels cycle 0..9 (so every class is present)."""
    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)

    return CifarArrays(
        images(n_train),
        np.arange(n_train) % 10,
        images(n_test),
        np.arange(n_test) % 10,
        "synthetic",
    )


def quick_config(**overrides: Any) -> Any:
    """A TrialConfig for fast CPU tests; `overrides` use dotted keys with '__' for '.'."""
    base = {"epochs": 1, "batch_size": 64, "device": "cpu", "threads": 2, "data.source": "bundled"}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_trial_config({}, base)


def write_mirror(directory: Path, arrays: CifarArrays) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(
        directory / "train.npz",
        images=arrays.train_images,
        labels=arrays.train_labels.astype(np.uint8),
    )
    np.savez(
        directory / "test.npz",
        images=arrays.test_images,
        labels=arrays.test_labels.astype(np.uint8),
    )
    return directory


def default_signals() -> None:
    """``preexec_fn`` of every process a test starts: the default dispositions of the signals
    tests send. A suite started in the background (``cmd &`` in a script, ``nohup``) runs with
    SIGINT (and SIGHUP) ignored, which a child inherits: its Ctrl-C would never arrive."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def run_cli(
    args: Sequence[str], cwd: Path | None = None, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cifartune`` in a real subprocess (exit codes, stderr, signals are real)."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **env}
    return subprocess.run(
        [sys.executable, "-m", "cifartune", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=default_signals,
    )


def start_cli(args: Sequence[str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """``python -m cifartune ARGS`` as a background process in a session of its own, with the
    default signal dispositions: a test can signal it, or kill it with every process it started
    (:func:`stop_session`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cifartune", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        start_new_session=True,
        preexec_fn=default_signals,
    )


def stop_session(process: subprocess.Popen[str]) -> None:
    """SIGKILL `process` (a session leader: :func:`start_cli`) and every live process of its
    session, then reap it. Nothing to do for a session already gone."""
    for pid in session_processes(process.pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # a pipe still held open: the process itself is reaped
        process.kill()
        process.wait(timeout=60)


@contextmanager
def stopped_at_exit(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The body's process, stopped with its whole session when the body ends, passed or failed:
    a failing test leaves nothing running."""
    try:
        yield process
    finally:
        stop_session(process)


# Metrics that measure time, not training: equal runs differ only there.
TIMING = ("time/train_s", "time/epoch_s", "time/images_per_s")


def read_parquet_once(path: Path) -> Any:
    """A Parquet file that a thread or process may be replacing, read as a reader must: its
    bytes in one open, then parsed. ``pd.read_parquet(path)`` opens the path twice (the footer,
    then the pages): a replace in between applies one file's footer to another's pages."""
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(path.read_bytes()))


def without_timings(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def round_trip(state: dict[str, Any]) -> Any:
    """A checkpoint through torch.save / torch.load onto the CPU, as a real resume reads it."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=False)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def headless_chromium(profile: Path, *args: str) -> list[str]:
    """Debian's Chromium, headless, with a fresh profile and no background connections (this
    machine has no network: they would fail, many at a time)."""
    assert CHROMIUM is not None
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
