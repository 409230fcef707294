"""One storage layer for every file a study writes: a local directory or any URI that
``pyarrow.fs`` resolves (``s3://bucket/prefix``, ``gs://...``; S3-compatible endpoints through
the standard ``AWS_ENDPOINT_URL``), the same filesystem Ray's checkpoints go through.

:class:`Location` mimics the small part of :class:`pathlib.Path` the study code uses. Writes
are replace-safe everywhere: a local file is written to a temporary name and renamed into
place; an object store replaces an object whole on each put, so a reader sees the old object
or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyarrow import fs


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only read it by setting
    it, a race once threads write files): Linux's /proc, else the usual 022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def is_uri(text: str) -> bool:
    return "://" in text


# Below S3's smallest multipart part, so pyarrow, whose part is larger, sends a payload this
# size as one PutObject when the stream opens lazily (allow_delayed_open): 1 request, not the
# 6 of a multipart upload to a temporary key moved into place.
SINGLE_PUT_BYTES = 5 * 2**20


def _one_put_is_safe(payload: bytes | memoryview) -> bool:
    """Whether `payload` can go straight to its key: sent as one PutObject (the stream opens
    lazily and holds less than a part), it is stored whole or not at all, except that an
    exception between opening the stream and writing to it would close it empty. Python raises
    those (KeyboardInterrupt from a signal) only in the main thread; a trial writes from its
    own thread, and an empty payload has nothing to lose."""
    small = len(payload) < SINGLE_PUT_BYTES
    return small and (not len(payload) or threading.current_thread() is not threading.main_thread())


def _with_delayed_open(uri: str) -> str:
    """An s3:// URI whose filesystem opens output streams lazily (unless the URI says)."""
    if not uri.startswith("s3://") or "allow_delayed_open=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}allow_delayed_open=true"


@dataclass(frozen=True)
class Location:
    """A file or directory on a local disk or in an object store."""

    filesystem: Any  # pyarrow.fs.FileSystem
    path: str  # inside `filesystem`
    scheme: str  # "" for a local path, else e.g. "s3"

    @classmethod
    def of(cls, where: str | Path | Location) -> Location:
        if isinstance(where, Location):
            return where
        text = str(where)
        if not is_uri(text):
            local = Path(text).expanduser().resolve()
            return cls(fs.LocalFileSystem(), str(local), "")
        filesystem, path = fs.FileSystem.from_uri(_with_delayed_open(text))
        return cls(filesystem, path.rstrip("/"), text.split("://", 1)[0])

    @property
    def local(self) -> bool:
        return not self.scheme

    @property
    def local_path(self) -> Path:
        assert self.local, f"{self} is not on a local disk"
        return Path(self.path)

    @property
    def uri(self) -> str:
        return self.path if self.local else f"{self.scheme}://{self.path}"

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> Location:
        return Location(self.filesystem, f"{self.path}/{name}", self.scheme)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def parent(self) -> Location:
        return Location(self.filesystem, self.path.rsplit("/", 1)[0], self.scheme)

    def _info(self) -> Any:
        return self.filesystem.get_file_info(self.path)

    def exists(self) -> bool:
        return bool(self._info().type != fs.FileType.NotFound)

    def is_file(self) -> bool:
        return bool(self._info().type == fs.FileType.File)

    def is_dir(self) -> bool:
        # An object store has no empty directories: a prefix with objects under it is one.
        return bool(self._info().type == fs.FileType.Directory)

    def stamp(self) -> tuple[int, int] | None:
        """(modification time ns, size), or None when the file is missing."""
        info = self._info()
        if info.type == fs.FileType.NotFound:
            return None
        return (info.mtime_ns or 0, info.size or 0)

    def files(self, suffix: str = "", *, recursive: bool = False) -> Iterator[Location]:
        """Files in this directory (and its subdirectories, when `recursive`) whose names end
        with `suffix`, skipping the hidden temporaries of interrupted writes; none where the
        directory does not exist. One listing: in an object store, one request per page."""
        selector = fs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        for info in self.filesystem.get_file_info(selector):
            name = info.path.rsplit("/", 1)[-1]
            if info.type == fs.FileType.File and name.endswith(suffix) and not name.startswith("."):
                yield Location(self.filesystem, info.path, self.scheme)

    def subdirs(self) -> Iterator[Location]:
        if not self.exists():
            return
        for info in self.filesystem.get_file_info(fs.FileSelector(self.path)):
            if info.type == fs.FileType.Directory:
                yield Location(self.filesystem, info.path, self.scheme)

    def read_bytes(self) -> bytes:
        """The file's bytes; FileNotFoundError for a file deleted, also between an object
        store's HEAD and GET (which pyarrow raises as a plain OSError)."""
        try:
            with self.filesystem.open_input_file(self.path) as handle:
                return bytes(handle.read())
        except FileNotFoundError:
            raise
        except OSError as exc:
            if self.exists():
                raise
            raise FileNotFoundError(f"{self}: deleted while read") from exc

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open_for_reading(self) -> io.BytesIO:
        return io.BytesIO(self.read_bytes())

    def write_bytes(self, payload: bytes | memoryview) -> None:
        """Replace the file whole (see the module docstring)."""
        if not self.local and _one_put_is_safe(payload):
            with self.filesystem.open_output_stream(self.path) as handle:
                handle.write(payload)
            return
        if not self.local:
            # A multipart upload: put under a hidden temporary key, then move it into place.
            # A process stopped during the upload (a SIGTERM unwinding through the stream
            # completes it with the parts so far) leaves a temporary key that readers skip,
            # never a truncated object at `path`.
            tmp = f"{self.path.rsplit('/', 1)[0]}/.{self.name}.{uuid.uuid4().hex}.tmp"
            with self.filesystem.open_output_stream(tmp) as handle:
                handle.write(payload)
            self.filesystem.move(tmp, self.path)
            return
        path = self.local_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # mkstemp makes the file 0600; a results directory is shared as the umask allows.
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def link_to(self, target: Location) -> None:
        """Make `target` a copy of this file without writing its bytes again: a hard link on
        a local disk (replacing `target` atomically; this file is only ever replaced, never
        rewritten in place, so the link keeps today's bytes), a server-side copy in an object
        store (one request that replaces the object whole)."""
        if not self.local:
            self.filesystem.copy_file(self.path, target.path)
            return
        tmp = target.parent.local_path / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            os.link(self.path, tmp)
        except OSError:  # a filesystem without hard links: copy the bytes after all
            target.write_bytes(self.read_bytes())
            return
        os.replace(tmp, target.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def mkdir(self) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    def unlink(self) -> None:
        if self.is_file():
            self.filesystem.delete_file(self.path)

    def rmtree(self) -> None:
        if self.is_dir():
            self.filesystem.delete_dir(self.path)

    def move_to(self, target: Location) -> None:
        target.parent.mkdir()
        self.filesystem.move(self.path, target.path)

    def for_ray(self) -> tuple[str, Any]:
        """(path, filesystem) to give Ray as its storage for this location: on a local disk the
        path alone; in an object store, the store without folder markers (below)."""
        if self.local:
            return self.path, None
        return self.path, fs.PyFileSystem(WithoutFolderMarkers(self.filesystem))


class WithoutFolderMarkers(fs.FileSystemHandler):
    """An object store whose ``create_dir`` writes nothing.

    pyarrow puts an empty ``folder/`` object for every folder it is asked to create, and Ray
    creates every trial's folder anew at each experiment snapshot (an upload of its staging
    directory): a request per trial per snapshot, so requests per event grew with the study.
    An object store needs no folders (a key's prefix is one), and Ray writes only files there,
    so dropping the markers loses nothing. Everything else goes to `filesystem` unchanged.
    """

    def __init__(self, filesystem: Any):
        self.filesystem = filesystem

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WithoutFolderMarkers) and self.filesystem.equals(other.filesystem)

    def __hash__(self) -> int:
        return hash(self.filesystem.type_name)

    def __reduce__(self) -> tuple[Any, ...]:  # Ray pickles its storage context to the trials
        return (WithoutFolderMarkers, (self.filesystem,))

    def get_type_name(self) -> str:
        return f"{self.filesystem.type_name}-without-folder-markers"

    def equals(self, other: Any) -> bool:
        return self == other

    def create_dir(self, path: str, recursive: bool) -> None:
        pass

    def get_file_info(self, paths: list[str]) -> list[Any]:
        return list(self.filesystem.get_file_info(paths))

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        return list(self.filesystem.get_file_info(selector))

    def delete_dir(self, path: str) -> None:
        self.filesystem.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.filesystem.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.filesystem.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.filesystem.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.filesystem.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.filesystem.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.filesystem.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.filesystem.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.filesystem.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.filesystem.open_append_stream(path, metadata=metadata)

    def normalize_path(self, path: str) -> str:
        return str(self.filesystem.normalize_path(path))
