"""What reading a study's results costs as the study grows: a synthetic study written through
cifartune's own writers (epoch files as trials write them, trial rows as the driver's recorder
writes them), then read the way users read it, each reader a fresh process:

- ``cifartune status``;
- the report's data load (``read_study``, what every view starts from);
- the Optuna mirror rebuilt (``cifartune export-optuna`` into a fresh SQLite file);
- duckdb and polars over the documented glob (docs/results.md).

For each it prints wall seconds and the process's peak memory (its own rusage), and the files the
study holds; on an S3 server on loopback (moto), the requests one ``status`` makes.

    python -m benchmarks.store_scale [--trials 100 1000] [--epochs 10] [--s3-trials 100]
                                     [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.overhead import S3Server
from cifartune.config.base import flatten
from cifartune.config.resolved import resolve
from cifartune.config.spec import spec_hash, trial_config
from cifartune.config.validation import build_spec
from cifartune.storage import Location
from cifartune.store.columns import epoch_records, trial_keys
from cifartune.store.directory import StudyDirectory
from cifartune.store.epochs import epoch_path, trial_epochs_dir, write_epoch, writer_token
from cifartune.study.recorder import StudyRecorder, TrialEvent

GLOB = "epochs/*/*.parquet"


def metrics(epoch: int, lr: float) -> dict[str, Any]:
    """An epoch of a trial that learns a little each epoch, with every engine metric."""
    return {
        "epoch": epoch, "lr": lr, "train/loss": 2.0 / epoch, "train/top1": 30.0 + epoch,
        "train/top5": 80.0, "val/loss": 2.1 / epoch, "val/top1": 28.0 + epoch + lr,
        "val/top5": 79.0, "time/train_s": 1.0, "time/epoch_s": 1.2, "time/images_per_s": 1e4,
        "time/cpu_s": 1.1, "time/ended_at": 1.767e9 + 60 * epoch, "diverged": False,
        "node_id": "bench", "pid": 1, "effective/precision": "fp32",
    }  # fmt: skip


def write_study(root: Location, name: str, trials: int, epochs: int) -> Location:
    """A completed random-search study of `trials` x `epochs`, written by the project's writers."""
    spec = build_spec(
        {
            "name": name,
            "base": {"epochs": epochs},
            "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
            "search": {"algorithm": "random", "samples": trials, "seed": 0},
        }
    )
    study = StudyDirectory(root / name)
    study.location.mkdir()
    study.write_spec(spec)
    began, ended = "2026-12-06T00:00:00+00:00", "2026-12-06T01:00:00+00:00"
    study.metadata().write(
        name=name, spec_hash=spec_hash(spec), state="completed", started=began, finished=ended,
        runs=[{"started": began}],
    )  # fmt: skip
    recorder = StudyRecorder(
        study.location,
        lambda sample: flatten(trial_config(spec, sample)),
        spec.metric,
        resolve(spec).mode,
        1.0,
        0.0,
    )
    writer, events = writer_token(), []
    with ThreadPoolExecutor(4) as pool:  # trials write their files at once, as in a study
        for i in range(trials):
            trial_id, lr = f"bench_{i:05d}", 10 ** (-4 + 3 * i / max(trials - 1, 1))
            sample = {"optim.lr": lr}
            flat = flatten(trial_config(spec, sample))
            keys = trial_keys(trial_id, flat, sample, study=name)
            rows = epoch_records([metrics(e, lr) for e in range(1, epochs + 1)], flat, **keys)
            paths = [epoch_path(trial_epochs_dir(study.location, trial_id), e, writer)
                     for e in range(1, epochs + 1)]  # fmt: skip
            list(pool.map(write_epoch, rows, paths))
            recorder.record_complete(trial_id)
            events.append(TrialEvent(trial_id, "TERMINATED", sample))
    recorder.record_events(events)
    return study.location


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall seconds and peak memory (MiB) of `command` as a process of its own."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or os.environ.copy()
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    error = process.stderr.read().decode()[-500:] if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[:4]} failed: {error}")
    return {"wall_s": round(wall, 2), "peak_mib": round(usage.ru_maxrss / 1024, 1)}


def readers(directory: Location, scratch: Path) -> dict[str, list[str]]:
    python = sys.executable
    where = directory.uri
    glob = f"{directory.path}/{GLOB}"
    return {
        "status": [python, "-m", "cifartune", "status", where],
        "report data load": [
            python, "-c",
            f"from cifartune.store.study_data import read_study; read_study({where!r})",
        ],
        "mirror rebuild": [
            python, "-m", "cifartune", "export-optuna", where,
            "--optuna-storage", f"sqlite:///{scratch / (directory.name + '.db')}",
        ],
        "duckdb glob": [
            python, "-c", f"import duckdb; duckdb.sql(\"select count(*) from read_parquet("
            f"'{glob}', union_by_name=true)\").fetchall()",
        ],
        "polars glob": [
            python, "-c", f"import polars as pl; pl.scan_parquet({glob!r}).select(pl.len())"
            ".collect()",
        ],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--s3-trials", type=int, nargs="*", default=[100])
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--work", type=Path, help="where the studies go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.work is not None:
        return run(args, args.work)
    with tempfile.TemporaryDirectory(prefix="store-scale-") as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    results: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)

    for trials in args.trials:
        start = time.perf_counter()
        directory = write_study(Location.of(work), f"local{trials}", trials, args.epochs)
        written = time.perf_counter() - start
        files = sum(1 for _ in directory.local_path.rglob("*.parquet"))
        report({"where": "local", "trials": trials, "epochs": args.epochs, "files": files,
                "write_s": round(written, 1)})  # fmt: skip
        for name, command in readers(directory, work).items():
            report({"where": "local", "trials": trials, "reader": name, **measure(command)})
    if args.s3_trials:
        s3 = S3Server(work / "moto.log")
        try:
            for trials in args.s3_trials:
                directory = write_study(
                    Location.of("s3://bench/r"), f"s3-{trials}", trials, args.epochs
                )
                before = s3.requests()
                status = readers(directory, work)["status"]
                row = measure(status, os.environ.copy())
                report({"where": "s3", "trials": trials, "reader": "status", **row,
                        "requests": s3.requests() - before})  # fmt: skip
        finally:
            s3.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
