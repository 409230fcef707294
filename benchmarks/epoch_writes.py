"""What writing one epoch's row costs as a trial gets long: a trial's epoch written as a file of
its own (cifartune's layout) against the same rows rewritten into one file per trial (the
layout of older versions), on a local disk and on an S3 server (moto, on loopback).

    python -m benchmarks.epoch_writes [--epochs 500] [--no-s3]

Each epoch is recorded through the trial writer in the foreground (no checkpoint is due, so the
time is the row's), with the full config and metric columns of a real trial. Prints the median
milliseconds per epoch over windows at the start, middle and end of the trial.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cifartune.config.base import flatten
from cifartune.config.trial import build_trial_config
from cifartune.storage import Location
from cifartune.store.columns import epoch_records, epoch_types, trial_keys
from cifartune.store.tables import write_rows
from cifartune.store.trial_writer import TrialWriter

WINDOW = 50


def metrics(epoch: int) -> dict[str, Any]:
    """A trial's epoch that never improves after the first (so no best checkpoint is due)."""
    return {
        "epoch": epoch, "lr": 0.05, "train/loss": 1.0, "train/top1": 50.0, "train/top5": 90.0,
        "val/loss": 1.0 + epoch, "val/top1": 50.0 - epoch / 100, "val/top5": 90.0,
        "time/train_s": 1.0, "time/epoch_s": 1.2, "time/images_per_s": 1e4, "time/cpu_s": 1.1,
        "diverged": False,
    }  # fmt: skip


def timed(record: Callable[[int], None], epochs: int) -> list[float]:
    """Seconds per `record(epoch)`, run off the main thread as a trial's epochs are (Ray runs
    a function trainable in a thread of its own), which is where an object store gets one
    request per small file."""

    def run() -> list[float]:
        seconds = []
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            record(epoch)
            seconds.append(time.perf_counter() - start)
        return seconds

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def per_epoch_files(directory: Location, epochs: int) -> list[float]:
    flat = flatten(build_trial_config({}, {"epochs": epochs}))
    writer = TrialWriter(
        directory, "t_1", sample={}, flat_config=flat, keys=trial_keys("t_1", flat, {}, study="b"),
        metric="val/top1", mode="max", every=10**6, extras={"node_id": "n", "pid": 1},
    )  # fmt: skip
    state = {"model": {}, "history": []}
    with writer:
        return timed(lambda e: writer.record(metrics(e), lambda: state), epochs - 1)


def one_rewritten_file(directory: Location, epochs: int) -> list[float]:
    flat = flatten(build_trial_config({}, {"epochs": epochs}))
    keys = trial_keys("t_1", flat, {}, study="b")
    rows: list[dict[str, Any]] = []

    def record(epoch: int) -> None:
        rows.extend(epoch_records([metrics(epoch)], flat, **keys))
        write_rows(rows, directory / "epochs" / "t_1.parquet", epoch_types())

    return timed(record, epochs - 1)


@contextlib.contextmanager
def s3_directory() -> Iterator[Location]:
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    store = fs.S3FileSystem(
        endpoint_override=endpoint, access_key="b", secret_key="b", region="us-east-1",
        allow_bucket_creation=True, allow_delayed_open=True,
    )  # fmt: skip
    store.create_dir("bench")
    try:
        yield Location(store, "bench/study", "s3")
    finally:
        server.stop()


def windows(seconds: list[float]) -> list[tuple[str, float]]:
    n = len(seconds)
    spans = {"first": (0, WINDOW), "middle": (n // 2 - WINDOW // 2, n // 2 + WINDOW // 2),
             "last": (n - WINDOW, n)}  # fmt: skip
    return [
        (f"{name} (epochs {a + 1}-{b})", 1000 * statistics.median(seconds[a:b]))
        for name, (a, b) in spans.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--no-s3", action="store_true", help="the local disk only")
    args = parser.parse_args(argv)
    places: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Location]]]] = [
        ("local disk", lambda: _local()),
    ]
    if not args.no_s3:
        places.append(("S3 (moto)", s3_directory))
    print("| storage | layout | " + " | ".join(("first", "middle", "last")) + " |")
    print("| --- | --- | --- | --- | --- |")
    for place, opened in places:
        for layout, run in (("a file per epoch", per_epoch_files),
                            ("one file per trial, rewritten", one_rewritten_file)):  # fmt: skip
            with opened() as directory:
                cells = windows(run(directory, args.epochs + 1))
            print(f"| {place} | {layout} | " + " | ".join(f"{ms:.2f} ms" for _, ms in cells) + " |")
    print(f"\nmedian ms per epoch over {WINDOW} epochs at the start, middle and end of a "
          f"{args.epochs}-epoch trial")  # fmt: skip


@contextlib.contextmanager
def _local() -> Iterator[Location]:
    with tempfile.TemporaryDirectory() as folder:
        yield Location.of(folder)


if __name__ == "__main__":
    main()
