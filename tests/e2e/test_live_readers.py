"""Results that any reader can read while a study runs: a real study (two trials at a time, their
epoch files written in the background) read in a loop, every file of it, the ways a user would:
pandas, pyarrow.dataset, duckdb and polars over the epoch files, the trial rows likewise. No
read may fail, no epoch may appear twice, no count may go down, and no file may change or vanish
once seen (no study here is resumed, the one case where epoch rows are withdrawn). Then the same
on an object store (moto), read through pyarrow's S3 filesystem."""

import contextlib
import glob
import os

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest
from pyarrow import fs

from cifartune.store.study_data import read_study

from ..support import TINY_BASE, start_cli, stopped_at_exit, write_spec
from ..support.clusters import s3_endpoint

pytestmark = pytest.mark.slow

# FIFO: every epoch but a trial's last is written in the background while the next trains.
SPEC = {
    "base": {**TINY_BASE, "epochs": 8, "batch_size": 100},
    "space": {"optim.lr": [0.05, 0.02, 0.01, 0.005]},
    "resources": {"cpus": 1, "max_concurrent": 2},
}
# Each trial's current row: its newest file (docs/results.md gives the same query).
LATEST_TRIAL_ROWS = (
    "select * from {} qualify row_number() over (partition by trial_id order by seq desc) = 1"
)


class Watch:
    """What one kind of reader saw: its errors, and the largest counts so far."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.reads = 0
        self.epochs = 0
        self.trials = 0
        self.seen: dict[str, tuple[int, ...]] = {}  # file -> its identity when first seen

    def unchanged(self, files: dict[str, tuple[int, ...]]) -> None:
        """`files` (path -> identity: inode, size, modification time) against what was seen."""
        for path, identity in self.seen.items():
            if path not in files:
                self.errors.append(f"{path} vanished")
            elif files[path] != identity:
                self.errors.append(f"{path} changed")
        self.seen.update(files)

    def epoch_rows(self, how: str, frame: pd.DataFrame) -> None:
        pairs = list(zip(frame["trial_id"], frame["epoch"], strict=True))
        if len(pairs) != len(set(pairs)):
            self.errors.append(f"{how}: an epoch twice")
        if len(pairs) < self.epochs:
            self.errors.append(f"{how}: {len(pairs)} rows after {self.epochs}")
        self.epochs = max(self.epochs, len(pairs))
        self.reads += 1

    def trial_rows(self, how: str, frame: pd.DataFrame) -> None:
        if frame["trial_id"].duplicated().any():
            self.errors.append(f"{how}: a trial twice")
        if len(frame) < self.trials:
            self.errors.append(f"{how}: {len(frame)} trials after {self.trials}")
        self.trials = max(self.trials, len(frame))

    def attempt(self, how: str, read) -> None:
        try:
            read()
        except Exception as exc:  # any failure of a reader is what this test looks for
            self.errors.append(f"{how}: {type(exc).__name__}: {exc}")


def read_local(results, watch: Watch) -> None:
    epochs, trials = results / "epochs", results / "trials"
    listed = glob.glob(f"{results}/*/*/*.parquet") + glob.glob(f"{results}/test.parquet")
    identities = {}
    for path in listed:
        with contextlib.suppress(FileNotFoundError):  # then reported as vanished
            stat = os.stat(path)
            identities[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    watch.unchanged(identities)
    files = sorted(glob.glob(f"{epochs}/*/*.parquet"))
    if files:
        watch.attempt("pandas glob", lambda: watch.epoch_rows(
            "pandas glob", pd.concat(pd.read_parquet(f) for f in files)))  # fmt: skip
        watch.attempt("pandas directory", lambda: watch.epoch_rows(
            "pandas directory", pd.read_parquet(epochs)))  # fmt: skip
        watch.attempt(
            "pyarrow.dataset",
            lambda: watch.epoch_rows(
                "pyarrow.dataset", ds.dataset(epochs, format="parquet").to_table().to_pandas()
            ),
        )
        watch.attempt(
            "duckdb",
            lambda: watch.epoch_rows(
                "duckdb", duckdb.sql(f"select * from read_parquet('{epochs}/*/*.parquet')").df()
            ),
        )
    if glob.glob(f"{trials}/*/*.parquet"):
        query = LATEST_TRIAL_ROWS.format(f"read_parquet('{trials}/*/*.parquet')")
        watch.attempt("duckdb trials", lambda: watch.trial_rows(
            "duckdb trials", duckdb.sql(query).df()))  # fmt: skip


def read_s3(store, prefix: str, watch: Watch) -> None:
    listed = store.get_file_info(fs.FileSelector(prefix, allow_not_found=True, recursive=True))
    watch.unchanged(
        {
            info.path: (info.size, info.mtime_ns)
            for info in listed
            if info.type == fs.FileType.File and info.path.endswith(".parquet")
        }
    )

    def dataset(folder):
        return ds.dataset(f"{prefix}/{folder}", format="parquet", filesystem=store)

    if store.get_file_info(f"{prefix}/epochs").type != fs.FileType.NotFound:
        watch.attempt("pyarrow.dataset on S3", lambda: watch.epoch_rows(
            "pyarrow.dataset on S3", dataset("epochs").to_table().to_pandas()))  # fmt: skip
        watch.attempt("pandas on S3", lambda: watch.epoch_rows(
            "pandas on S3", pd.read_parquet(f"{prefix}/epochs", filesystem=store)))  # fmt: skip
    if store.get_file_info(f"{prefix}/trials").type != fs.FileType.NotFound:
        # duckdb has no S3 of its own here (its httpfs extension is downloaded): it queries
        # the Arrow dataset.
        query = LATEST_TRIAL_ROWS.format("trials")
        watch.attempt(
            "duckdb on S3",
            lambda: watch.trial_rows(
                "duckdb on S3", duckdb.from_arrow(dataset("trials")).query("trials", query).df()
            ),
        )


def watch_study(tmp_path, storage: str, read) -> Watch:
    spec = write_spec(tmp_path, name="live", **SPEC)
    watch = Watch()
    with stopped_at_exit(start_cli(["run", str(spec), "--storage", storage], tmp_path)) as study:
        while study.poll() is None:
            read(watch)
        assert study.returncode == 0, study.stderr.read()[-3000:]
    read(watch)  # after the end: everything is there
    return watch


def test_readers_of_a_running_study_see_whole_files_each_epoch_once(tmp_path):
    results = tmp_path / "r" / "live"
    watch = watch_study(tmp_path, str(tmp_path / "r"), lambda w: read_local(results, w))
    assert watch.errors == []
    assert watch.epochs == 4 * 8 and watch.trials == 4
    assert watch.reads > 4 * 10  # the loop read while the study ran, not only after it
    assert read_study(results).meta["state"] == "completed"


def test_readers_of_a_running_study_in_an_object_store(tmp_path):
    with s3_endpoint() as endpoint:
        store = fs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        store.create_dir("lab")
        watch = watch_study(
            tmp_path, "s3://lab/studies", lambda w: read_s3(store, "lab/studies/live", w)
        )
    assert watch.errors == []
    assert watch.epochs == 4 * 8 and watch.trials == 4
    assert watch.reads > 4 * 5
