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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyarrow import fs


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: set it back at once
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def is_uri(text: str) -> bool:
    return "://" in text


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
        filesystem, path = fs.FileSystem.from_uri(text)
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

    def files(self, suffix: str = "") -> Iterator[Location]:
        """Files directly in this directory whose names end with `suffix`, skipping the
        hidden temporaries of interrupted local writes."""
        if not self.exists():
            return
        for info in self.filesystem.get_file_info(fs.FileSelector(self.path)):
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
        with self.filesystem.open_input_file(self.path) as handle:
            return bytes(handle.read())

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open_for_reading(self) -> io.BytesIO:
        return io.BytesIO(self.read_bytes())

    def write_bytes(self, payload: bytes | memoryview) -> None:
        """Replace the file whole (see the module docstring)."""
        if not self.local:
            # Put under a hidden temporary key, then move it into place: a process stopped
            # during the put (a SIGTERM unwinding through the stream closes it) leaves a
            # temporary key that readers skip, never a truncated or empty object at `path`.
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
            os.fchmod(fd, 0o666 & ~_UMASK)
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
