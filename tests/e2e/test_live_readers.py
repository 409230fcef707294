"""Results that any reader can read while a study runs: a real study (two trials at a time, their
epoch files written in the background, finished trials committed to the study's Delta tables
and their files deleted) read in a loop the ways docs/results.md documents: the files of the
trials still running first, then the table's snapshot, each row of a file kept where the
snapshot lacks its key, read again where a file was committed and deleted under the read; with
pandas, pyarrow, duckdb and polars. No read may fail, no epoch may appear twice, no count may
go down, no file may change once seen, and a file may vanish only once the table holds its
rows (no study here is resumed, the one case where epoch rows are withdrawn). Then the same on
an object store (moto), read through pyarrow's S3 filesystem and deltalake."""

import contextlib
import glob
import os

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable
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
EPOCH_KEY, TRIAL_KEY = ["trial_id", "epoch"], ["trial_id", "seq"]
# A file committed and deleted between a reader's listing and its read: read again (pyarrow
# raises a plain OSError for a key gone from an object store).
GONE = (OSError, duckdb.IOException, pl.exceptions.ComputeError)


class Watch:
    """What one kind of reader saw: its errors, and the largest counts so far."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.reads = 0
        self.epochs = 0
        self.trials = 0
        self.seen: dict[str, tuple[int, ...]] = {}  # file -> its identity when first seen

    def unchanged(self, files: dict[str, tuple[int, ...]], committed: set[str]) -> None:
        """`files` (path -> identity: size, modification time) against what was seen; a trial's
        own files may vanish once the table (`committed`: its trials, read after the listing)
        holds its rows."""
        for path, identity in list(self.seen.items()):
            if path not in files:
                trial = os.path.basename(os.path.dirname(path))
                if "/tables/" in path or trial not in committed:
                    self.errors.append(f"{path} vanished")
                del self.seen[path]
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
        for _ in range(5):
            try:
                read()
                return
            except GONE:
                continue
            except Exception as exc:  # any other failure of a reader is what this test looks for
                self.errors.append(f"{how}: {type(exc).__name__}: {exc}")
                return
        self.errors.append(f"{how}: files kept vanishing")


def keep_new(tail: pd.DataFrame, committed: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """The snapshot's rows and the file rows whose key it lacks (docs/results.md)."""
    if committed.empty or tail.empty:
        either = tail if committed.empty else committed
        return either if set(key) <= set(either.columns) else pd.DataFrame(columns=key)
    known = pd.MultiIndex.from_frame(committed[key])
    return pd.concat([committed, tail[~pd.MultiIndex.from_frame(tail[key]).isin(known)]])


def newest(trials: pd.DataFrame) -> pd.DataFrame:
    return trials.sort_values("seq").drop_duplicates("trial_id", keep="last")


def delta(uri: str, options: dict | None = None) -> DeltaTable | None:
    if not DeltaTable.is_deltatable(uri, options):
        return None
    return DeltaTable(uri, storage_options=options)


def committed_trials(uri: str, options: dict | None = None) -> set[str]:
    table = delta(uri, options)
    return set() if table is None else set(table.to_pandas(columns=["trial_id"])["trial_id"])


def read_local(results, watch: Watch) -> None:
    epochs, tables = results / "epochs", results / "tables"
    listed = glob.glob(f"{results}/**/*.parquet", recursive=True)
    identities = {}
    for path in listed:
        with contextlib.suppress(FileNotFoundError):  # then checked as vanished
            stat = os.stat(path)
            identities[path] = (stat.st_size, stat.st_mtime_ns)
    watch.unchanged(identities, committed_trials(str(tables / "epochs")))

    def files_then_table(read_files, read_table, key=EPOCH_KEY) -> pd.DataFrame:
        tail = read_files()  # first: what it misses was committed before the table is read
        table = delta(str(tables / ("epochs" if key == EPOCH_KEY else "trials")))
        return keep_new(tail, read_table(table) if table else pd.DataFrame(), key)

    def pandas_glob() -> pd.DataFrame:
        files = sorted(glob.glob(f"{epochs}/*/*.parquet"))
        return (
            pd.concat([pd.read_parquet(f) for f in files])
            if files
            else pd.DataFrame(columns=EPOCH_KEY)
        )

    def pandas_directory() -> pd.DataFrame:
        has_files = glob.glob(f"{epochs}/*/*.parquet")
        return pd.read_parquet(epochs) if has_files else pd.DataFrame(columns=EPOCH_KEY)

    def no_files() -> bool:  # then a glob reader raises: the files part is empty
        return not glob.glob(f"{epochs}/*/*.parquet")

    def duckdb_query() -> pd.DataFrame:
        if no_files():
            return files_then_table(lambda: pd.DataFrame(columns=EPOCH_KEY), DeltaTable.to_pandas)
        tail = duckdb.sql(f"select * from read_parquet('{epochs}/*/*.parquet')").df()
        table = delta(str(tables / "epochs"))
        if table is None:
            return tail
        connection = duckdb.connect()
        connection.register("tail", tail)
        connection.register("committed", table.to_pyarrow_dataset())
        return connection.sql(
            "select * from committed union all by name "
            "select * from tail anti join committed using (trial_id, epoch)"
        ).df()

    def polars_read() -> pd.DataFrame:
        if no_files():
            return files_then_table(lambda: pd.DataFrame(columns=EPOCH_KEY), DeltaTable.to_pandas)
        tail = pl.read_parquet(f"{epochs}/*/*.parquet")
        table = delta(str(tables / "epochs"))
        if table is None:
            return tail.to_pandas()
        committed = pl.read_delta(str(tables / "epochs"))
        fresh = tail.join(committed.select(EPOCH_KEY), on=EPOCH_KEY, how="anti")
        return pd.concat([committed.to_pandas(), fresh.to_pandas()])

    readers = {
        "pandas glob": lambda: files_then_table(pandas_glob, DeltaTable.to_pandas),
        "pandas directory": lambda: files_then_table(pandas_directory, DeltaTable.to_pandas),
        "pyarrow.dataset": lambda: files_then_table(
            lambda: (
                ds.dataset(epochs, format="parquet").to_table().to_pandas()
                if epochs.exists()
                else pd.DataFrame(columns=EPOCH_KEY)
            ),
            lambda t: t.to_pyarrow_table().to_pandas(),
        ),
    }
    readers |= {"duckdb": duckdb_query, "polars": polars_read}
    for how, read in readers.items():
        watch.attempt(how, lambda how=how, read=read: watch.epoch_rows(how, read()))

    def trial_files() -> pd.DataFrame:
        if not glob.glob(f"{results}/trials/*/*.parquet"):
            return pd.DataFrame(columns=TRIAL_KEY)
        return duckdb.sql(f"select * from read_parquet('{results}/trials/*/*.parquet')").df()

    watch.attempt("duckdb trials", lambda: watch.trial_rows("duckdb trials", newest(
        files_then_table(trial_files, DeltaTable.to_pandas, TRIAL_KEY))))  # fmt: skip


def read_s3(store, prefix: str, watch: Watch) -> None:
    options = {
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
    }
    listed = store.get_file_info(fs.FileSelector(prefix, allow_not_found=True, recursive=True))
    committed = committed_trials(f"s3://{prefix}/tables/epochs", options)
    watch.unchanged(
        {
            info.path: (info.size, info.mtime_ns)
            for info in listed
            if info.type == fs.FileType.File and info.path.endswith(".parquet")
        },
        committed,
    )

    def files_then_table(folder: str, key: list[str]) -> pd.DataFrame:
        if store.get_file_info(f"{prefix}/{folder}").type == fs.FileType.NotFound:
            tail = pd.DataFrame(columns=key)
        else:
            found = ds.dataset(f"{prefix}/{folder}", format="parquet", filesystem=store)
            tail = found.to_table().to_pandas() if found.files else pd.DataFrame(columns=key)
        table = delta(f"s3://{prefix}/tables/{folder}", options)
        return keep_new(tail, table.to_pandas() if table else pd.DataFrame(), key)

    watch.attempt("pyarrow.dataset and deltalake on S3", lambda: watch.epoch_rows(
        "S3 epochs", files_then_table("epochs", EPOCH_KEY)))  # fmt: skip
    watch.attempt("pyarrow.dataset and deltalake on S3, trials", lambda: watch.trial_rows(
        "S3 trials", newest(files_then_table("trials", TRIAL_KEY))))  # fmt: skip


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
    assert not glob.glob(f"{results}/epochs/*/*.parquet")  # every trial committed
    assert len(DeltaTable(str(results / "tables" / "epochs")).file_uris()) <= 4


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
