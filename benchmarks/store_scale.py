"""What reading a study's results costs as the study grows: a synthetic study written through
cifartune's own writers (epoch files as trials write them, trial rows as the driver's recorder
writes them, finished trials committed to the study's tables by the driver's committer, a batch
of `--commit-every` trials at a time, and compacted at the end as the driver does), then read
the way users read it, each reader a fresh process:

- ``cifartune status``;
- the report's data load (``read_study``, what every view starts from);
- the whole ``cifartune report`` (figures and HTML);
- the Optuna mirror rebuilt (``cifartune export-optuna`` into a fresh SQLite file);
- duckdb and polars over the epochs table (docs/results.md).

For each it prints wall seconds and the process's peak memory (its own rusage), and the files the
study holds; the driver's commit of a batch at the study's start and at its end (seconds, and
on an S3 server on loopback, moto, requests), to see whether it grows with the study; and the
requests one ``status`` makes on moto.

    python -m benchmarks.store_scale [--trials 1000 10000] [--epochs 10] [--s3-trials 100 1000]
                                     [--commit-every 100] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.fs
from deltalake import DeltaTable

from benchmarks.overhead import S3Server
from cifartune.config.base import flatten
from cifartune.config.resolved import resolve
from cifartune.config.spec import spec_hash, trial_config
from cifartune.config.validation import build_spec
from cifartune.storage import Location
from cifartune.store.columns import epoch_records, trial_keys
from cifartune.store.committer import commit_trials
from cifartune.store.directory import StudyDirectory
from cifartune.store.epochs import epoch_path, trial_epochs_dir, write_epoch, writer_token
from cifartune.study.recorder import StudyRecorder, TrialEvent

TABLE = "tables/epochs"


def metrics(epoch: int, lr: float) -> dict[str, Any]:
    """An epoch of a trial that learns a little each epoch, with every engine metric."""
    return {
        "epoch": epoch, "lr": lr, "train/loss": 2.0 / epoch, "train/top1": 30.0 + epoch,
        "train/top5": 80.0, "val/loss": 2.1 / epoch, "val/top1": 28.0 + epoch + lr,
        "val/top5": 79.0, "time/train_s": 1.0, "time/epoch_s": 1.2, "time/images_per_s": 1e4,
        "time/cpu_s": 1.1, "time/ended_at": 1.767e9 + 60 * epoch, "diverged": False,
        "node_id": "bench", "pid": 1, "effective/precision": "fp32",
    }  # fmt: skip


def write_study(
    root: Location,
    name: str,
    trials: int,
    epochs: int,
    commit_every: int,
    requests: Callable[[], int] = lambda: 0,
) -> tuple[Location, list[tuple[float, int]]]:
    """A completed random-search study of `trials` x `epochs`, written by the project's writers
    and committed `commit_every` trials at a time; each commit's seconds and `requests`."""
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
    writer, events, commits = writer_token(), [], []
    with ThreadPoolExecutor(4) as pool:  # trials write their files at once, as in a study
        for i in range(trials):
            if i and i % commit_every == 0:
                commits.append(commit(recorder, events, requests))
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
    commits.append(commit(recorder, events, requests, final=True))
    return study.location, commits


def commit(
    recorder: StudyRecorder,
    events: list[TrialEvent],
    requests: Callable[[], int],
    final: bool = False,
) -> tuple[float, int]:
    """The driver's part for a batch of finished trials: their rows, then their commit."""
    recorder.record_events(events)
    before, start = requests(), time.perf_counter()
    commit_trials(recorder.directory, [e.trial_id for e in events], final=final)
    events.clear()
    return time.perf_counter() - start, requests() - before


# Runs a reader and prints its wall seconds and peak memory. A process of its own started by
# this small one: Linux keeps the high-water mark of a process's memory across fork and exec,
# so a reader forked from the benchmark itself would report the benchmark's memory.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
error = child.stderr.read().decode()[-500:]
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"wall_s": round(time.perf_counter() - start, 2),
                  "peak_mib": round(usage.ru_maxrss / 1024, 1),
                  "code": os.waitstatus_to_exitcode(status), "error": error}))
"""


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall seconds and peak memory (MiB) of `command` as a process of its own."""
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command],
        capture_output=True, text=True, env=env or os.environ.copy(), check=True,
    )  # fmt: skip
    row = json.loads(launched.stdout)
    if row.pop("code") != 0:
        raise RuntimeError(f"{command[:4]} failed: {row['error']}")
    del row["error"]
    return dict(row)


def readers(directory: Location, scratch: Path) -> dict[str, list[str]]:
    python = sys.executable
    where = directory.uri
    table = f"{directory.path}/{TABLE}"
    return {
        "status": [python, "-m", "cifartune", "status", where],
        "report data load": [
            python, "-c",
            f"from cifartune.store.study_data import read_study; read_study({where!r})",
        ],
        "report": [
            python, "-m", "cifartune", "report", where, "--out",
            str(scratch / f"report-{directory.name}"),
        ],
        "mirror rebuild": [
            python, "-m", "cifartune", "export-optuna", where,
            "--optuna-storage", f"sqlite:///{scratch / (directory.name + '.db')}",
        ],
        "duckdb table": [
            python, "-c", f"import duckdb; from deltalake import DeltaTable; "
            f"t = DeltaTable({table!r}).to_pyarrow_dataset(); "
            "duckdb.sql('select count(*) from t').fetchall()",
        ],
        "polars table": [
            python, "-c", f"import polars as pl; pl.scan_delta({table!r}).select(pl.len())"
            ".collect()",
        ],
    }  # fmt: skip


def commit_costs(commits: list[tuple[float, int]]) -> dict[str, Any]:
    """The first and the last batch's commit (before the final one), and all of them."""
    batches = commits[:-1] or commits
    return {
        "commits": len(commits),
        "first_commit_s": round(batches[0][0], 3),
        "last_commit_s": round(batches[-1][0], 3),
        "first_commit_requests": batches[0][1],
        "last_commit_requests": batches[-1][1],
        "commit_s_total": round(sum(c[0] for c in commits), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--s3-trials", type=int, nargs="*", default=[100, 1000])
    parser.add_argument(
        "--s3-copy-trials", type=int, nargs="*", default=[],
        help="sizes of the local studies to copy to moto as they are and read there (a study "
        "as its driver leaves it, without writing it through moto request by request)",
    )  # fmt: skip
    parser.add_argument("--commit-every", type=int, default=100, help="trials per commit")
    parser.add_argument("--skip", nargs="*", default=[], help="readers not to run")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--work", type=Path,
        help="where the studies go (default: a temp dir); a local study already there is read "
        "again, not rewritten",
    )  # fmt: skip
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
        directory, commits = Location.of(work / f"local{trials}"), [(0.0, 0)]
        if not directory.is_dir():  # a study of an earlier run is read again
            directory, commits = write_study(
                Location.of(work), f"local{trials}", trials, args.epochs, args.commit_every
            )
        written = time.perf_counter() - start
        files = sum(1 for _ in directory.local_path.rglob("*.parquet"))
        on_disk = sum(1 for _ in (directory.local_path / TABLE).glob("*.parquet"))
        in_snapshot = len(DeltaTable(str(directory.local_path / TABLE)).file_uris())
        # Files a compaction replaced stay on disk an hour (store.snapshot), then go.
        report({"where": "local", "trials": trials, "epochs": args.epochs, "files": files,
                "table_data_files": in_snapshot, "table_files_on_disk": on_disk,
                "write_s": round(written, 1),
                **commit_costs(commits)})  # fmt: skip
        for name, command in readers(directory, work).items():
            if name not in args.skip:
                report({"where": "local", "trials": trials, "reader": name, **measure(command)})
    if args.s3_trials or args.s3_copy_trials:
        s3 = S3Server(work / "moto.log")
        try:
            for trials in args.s3_trials:
                directory, commits = write_study(
                    Location.of("s3://bench/r"), f"s3-{trials}", trials, args.epochs,
                    args.commit_every, s3.requests,
                )  # fmt: skip
                before = s3.requests()
                status = readers(directory, work)["status"]
                row = measure(status, os.environ.copy())
                report({"where": "s3", "trials": trials, "reader": "status", **row,
                        "requests": s3.requests() - before, **commit_costs(commits)})  # fmt: skip
            for trials in args.s3_copy_trials:
                source = Location.of(work / f"local{trials}")
                target = Location.of(f"s3://bench/copied/local{trials}")
                pyarrow.fs.copy_files(
                    source.path, target.path, source.filesystem, target.filesystem
                )
                before = s3.requests()
                row = measure(readers(target, work)["status"], os.environ.copy())
                report({"where": "s3 (copied)", "trials": trials, "reader": "status", **row,
                        "requests": s3.requests() - before})  # fmt: skip
        finally:
            s3.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
