"""How a study's files reach an object store (a real S3 API server, moto, on loopback): Ray's
storage without folder markers, whose number grew with the study at every experiment snapshot,
and writes that are one request where that cannot leave a partial object."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cifartune.storage import SINGLE_PUT_BYTES, Location, WithoutFolderMarkers

from ..support.clusters import s3_endpoint

pytestmark = pytest.mark.slow  # an S3 server process


@pytest.fixture(scope="module")
def bucket() -> Iterator[Any]:
    """A bucket on a fresh S3 server; yields a boto3 client to see its raw keys."""
    import boto3
    from pyarrow import fs

    with s3_endpoint() as endpoint:
        store = fs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        store.create_dir("study-bucket")
        yield boto3.client("s3", endpoint_url=endpoint)


def keys(client: Any, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket="study-bucket", Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_rays_storage_in_an_object_store_holds_files_and_no_folder_markers(bucket, tmp_path):
    # What Ray does at each experiment snapshot: upload its staging directory, one folder per
    # trial (empty: cifartune writes no Ray result files), and create folders for trials.
    staging = tmp_path / "staging"
    for trial in ("train_trial_a", "train_trial_b"):
        (staging / trial).mkdir(parents=True)
    (staging / "experiment_state.json").write_text('{"trials": 2}')
    path, ray_fs = Location.of("s3://study-bucket/markers/ray").for_ray()
    from pyarrow import fs

    fs.copy_files(str(staging), path, destination_filesystem=ray_fs)
    ray_fs.create_dir(f"{path}/train_trial_c", recursive=True)

    assert keys(bucket, "markers/") == ["markers/ray/experiment_state.json"]
    # Ray ships its storage to every trial process: the store survives pickling.
    shipped = pickle.loads(pickle.dumps(ray_fs))
    with shipped.open_input_file(f"{path}/experiment_state.json") as handle:
        assert handle.read() == b'{"trials": 2}'
    assert shipped.get_file_info(path).type == fs.FileType.Directory
    assert Location.of(tmp_path).for_ray() == (str(tmp_path), None)


class Recording(WithoutFolderMarkers):
    """The store, with the keys written and moved recorded."""

    def __init__(self, filesystem: Any):
        super().__init__(filesystem)
        self.opened: list[str] = []
        self.moved: list[tuple[str, str]] = []

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        self.opened.append(path)
        return super().open_output_stream(path, metadata)

    def move(self, src: str, dest: str) -> None:
        self.moved.append((src, dest))
        super().move(src, dest)


def recorded(uri: str) -> tuple[Location, Recording]:
    from pyarrow import fs

    real = Location.of(uri)
    handler = Recording(real.filesystem)
    return Location(fs.PyFileSystem(handler), real.path, real.scheme), handler


def in_a_thread(write: Any) -> None:
    worker = threading.Thread(target=write)
    worker.start()
    worker.join()


@pytest.mark.parametrize(
    ("size", "thread", "straight"),
    [
        (1000, True, True),  # a trial's epoch row: one PutObject
        (1000, False, False),  # the main thread, where a signal can interrupt the put
        (0, False, True),  # an empty marker: nothing to lose
        (SINGLE_PUT_BYTES + 1, True, False),  # a multipart upload
    ],
)
def test_a_write_goes_straight_to_its_key_only_where_no_partial_object_can_result(
    bucket, size, thread, straight
):
    target, store = recorded(f"s3://study-bucket/writes/{size}-{thread}/file.bin")
    target.write_bytes(b"old")
    store.opened.clear(), store.moved.clear()
    payload = b"x" * size

    def write() -> None:
        target.write_bytes(payload)

    in_a_thread(write) if thread else write()

    assert target.read_bytes() == payload
    assert (store.opened == [target.path]) is straight
    assert bool(store.moved) is not straight
    names = [key.rsplit("/", 1)[-1] for key in keys(bucket, f"writes/{size}-{thread}/")]
    assert "file.bin" in names and not [name for name in names if name.startswith(".")]
