"""The tests' one support module: small generated datasets, quick configs, real CLI processes
(run, started in a session of their own, stopped with everything they started), tiny study
specs for the Ray tests, and studies fabricated without Ray for the view tests. Real
components on loopback (Ray clusters, an S3 server) are in :mod:`.clusters`."""

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
import pandas as pd
import yaml

from cifartune.config.trial import build_trial_config
from cifartune.engine.data import CifarArrays
from cifartune.study.supervise import session_processes

REPO = Path(__file__).resolve().parents[2]
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


def start_cli(args: Sequence[str], cwd: Path | None = None, **env: str) -> subprocess.Popen[str]:
    """``python -m cifartune ARGS`` as a background process in a session of its own, with the
    default signal dispositions: a test can signal it, or kill it with every process it started
    (:func:`stop_session`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cifartune", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", **env},
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


def run_epochs(out: Path) -> pd.DataFrame:
    """The epoch rows of a `cifartune train` run in `out`, as a reader sees them now."""
    from cifartune.storage import Location
    from cifartune.store.epochs import EpochReader

    return pd.DataFrame(EpochReader().rows(Location.of(out / "epochs")))


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


TINY_BASE = {
    "epochs": 2,
    "batch_size": 50,
    "data": {"source": "bundled", "train_subset": 100, "val_size": 100},
}


def write_spec(directory: Path, **fields: Any) -> Path:
    spec = {"name": "tiny", "base": TINY_BASE, "resources": {"cpus": 1}, **fields}
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# Put on PYTHONPATH with KILL_DURING_COMMIT=<moment>: the process SIGKILLs itself at that moment
# of its first commit to the study's tables (faults/sitecustomize.py names the moments).
FAULTS = Path(__file__).parent / "faults"
KILL_DURING_COMMIT = "CIFARTUNE_TEST_KILL_DURING_COMMIT"


def epoch_rows(epochs: pd.DataFrame) -> set[tuple[Any, ...]]:
    """Each epoch row as written: its trial, epoch, process and end time (a rerun of the same
    epoch differs in the last two), whether read from its file or the committed table."""
    return set(epochs[["trial_id", "epoch", "pid", "time/ended_at"]].itertuples(index=False))


def withdrawn_rows(results: Path) -> set[tuple[Any, ...]]:
    """The rows of the epoch files a resume withdrew (an epoch past the last checkpoint)."""
    files = sorted((results / "withdrawn").rglob("*.parquet"))
    return epoch_rows(pd.concat(map(pd.read_parquet, files))) if files else set()


def epochs_of(results: Path) -> pd.DataFrame:
    from cifartune.store.study_data import read_study

    return read_study(results).epochs


def start_study(spec: Path, cwd: Path, *args: str, **env: str) -> Any:
    """`cifartune run SPEC --storage CWD/r` as a real background process in a session of its own
    (so a test can signal or kill it with every process it started: helpers.stop_session)."""
    return start_cli(["run", str(spec), "--storage", str(cwd / "r"), *args], cwd, **env)


def wait_for(predicate: Any, timeout: float = 240) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def epochs_so_far(results: Path) -> pd.DataFrame:
    """The epochs a running study has written, or an empty frame before it has any."""
    from cifartune.store.study_data import read_study

    try:
        return read_study(results).epochs
    except Exception:
        return pd.DataFrame()


DETERMINISTIC = ["epoch", "train/loss", "train/top1", "val/loss", "val/top1", "val/top5", "lr"]


def fabricate_study(
    directory: Path,
    spec_tree: dict[str, Any],
    curves: dict[str, Any],
    state: str = "completed",
    test_scores: dict[str, float] | None = None,
) -> Path:
    """A study results directory written by the study code (spec loader + StudyRecorder) from
    made-up epoch metrics instead of Ray: `curves` maps a trial id to (sample, [val_top1 per
    epoch], final state, diverged flag)."""
    import json
    import math

    from cifartune.config.base import flatten
    from cifartune.config.resolved import resolve
    from cifartune.config.spec import spec_hash, trial_config
    from cifartune.config.validation import build_spec
    from cifartune.storage import Location
    from cifartune.store.columns import epoch_records, trial_keys
    from cifartune.store.epochs import epoch_path, trial_epochs_dir, write_epoch
    from cifartune.store.tables import write_table
    from cifartune.study.recorder import StudyRecorder, TrialEvent

    def resolve_flat(spec, sample):
        return flatten(trial_config(spec, sample))

    spec = build_spec(spec_tree)
    study_dir = directory / spec.name
    study_dir.mkdir(parents=True)
    (study_dir / "spec.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    (study_dir / "study.json").write_text(
        json.dumps(
            {
                "name": spec.name,
                "spec_hash": spec_hash(spec),
                "state": state,
                "started": "2026-01-01T00:00:00+00:00",
                "versions": {"torch": "x"},
                "hardware": {"host": "test", "cpus": 2, "gpus": []},
            }
        )
    )
    recorder = StudyRecorder(
        study_dir,
        lambda s: resolve_flat(spec, s),
        spec.metric,
        resolve(spec).mode,
        spec.resources.cpus,
        spec.resources.gpus,
    )
    events = []
    for trial_id, (sample, val_top1, final_state, diverged) in curves.items():
        history = []
        for epoch, top1 in enumerate(val_top1, start=1):
            last = epoch == len(val_top1)
            loss = 2.3 - 0.08 * epoch + (0.02 * epoch**1.5 if top1 < 60 else 0)
            history.append(
                {
                    "epoch": epoch,
                    "lr": 0.1,
                    "train/loss": 2.3 - 0.1 * epoch,
                    "train/top1": min(99.0, top1 + 2 * epoch),
                    "train/top5": 90.0,
                    "val/loss": math.nan if (diverged and last) else loss,
                    "val/top1": top1,
                    "val/top5": 90.0,
                    "time/train_s": 1.0 + 8 / sample.get("batch_size", 128),
                    "time/epoch_s": 1.2 + 8 / sample.get("batch_size", 128),
                    "time/images_per_s": 100.0 * sample.get("batch_size", 128) ** 0.5,
                    "diverged": diverged and last,
                    "init/loss": 2.30,
                    "init/top1": 10.0,
                    "init/top5": 50.0,
                    "node_id": "n1",
                    "pid": 1,
                    "time/ended_at": 1.767e9 + 60 * epoch,  # Unix seconds, as time.time()
                    "effective/precision": "bf16",  # what precision auto picked
                }
            )
        flat = resolve_flat(spec, sample)
        rows = epoch_records(history, flat, **trial_keys(trial_id, flat, sample, study=spec.name))
        folder = trial_epochs_dir(Location.of(study_dir), trial_id)
        for row in rows:
            write_epoch(row, epoch_path(folder, row["epoch"], "0f"))
        if final_state == "TERMINATED":
            recorder.record_complete(trial_id)
        events.append(TrialEvent(trial_id, final_state, sample))
    recorder.record_events(events)
    if test_scores:
        trials = recorder.trial_table()
        rows = [
            {
                "rank": 1,
                "group": trials.set_index("trial_id").loc[t, "group"],
                "trial_id": t,
                "seed": 0,
                "variant": "",
                "epoch": 1,
                "test/loss": 1.0,
                "test/top1": v,
                "test/top5": 95.0,
            }
            for t, v in test_scores.items()
        ]
        write_table(pd.DataFrame(rows), study_dir / "test.parquet")
    return study_dir
