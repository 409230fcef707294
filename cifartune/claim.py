"""Who owns a study: study.json (state, host, pid, heartbeat), the one-driver lock, and the
claim that refuses to mix two studies or two drivers in one results directory. Light on
purpose (no torch, no Ray), so status views can tell a live study from a dead driver's."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .results import LOCK_FILE, SPEC_FILE, STUDY_FILE, atomic_write_text
from .spec import StudySpec, spec_hash
from .storage import Location

# Seconds between heartbeats of a running driver, and the age past which a study whose driver
# runs on another host is taken for dead.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 4 * HEARTBEAT_S


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_writable(directory: Location) -> None:
    try:
        directory.mkdir()
        probe = directory / "write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"storage: cannot write results to {directory}: {exc.strerror or exc}; "
            "pass --storage with a writable directory"
        ) from None


class StudyMetadata:
    """study.json: who runs the study (host, pid, heartbeat) and in which state it is.

    While a driver runs, a thread refreshes the heartbeat every HEARTBEAT_S seconds, so a study
    whose driver died (SIGKILL, power loss) is told apart from one that is running."""

    def __init__(self, directory: Location):
        self.path = directory / STUDY_FILE
        self.data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        return json.loads(self.path.read_text()) if self.path.is_file() else None

    def write(self, **updates: Any) -> None:
        with self._lock:
            self.data.update(updates, heartbeat=now())
            atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                self.write()

        self._thread = threading.Thread(target=beat, name="cifartune-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def driver_gone(meta: Mapping[str, Any], *, lock_free: bool | None) -> bool:
    """Whether a study marked running has lost its driver: on this host, its file lock is free
    (the OS releases it when the process dies) or, in an object store (no file lock,
    `lock_free` None), its process is gone; on another host, its heartbeat has stopped."""
    if meta.get("state") != "running":
        return False
    if meta.get("host") == socket.gethostname():
        return lock_free if lock_free is not None else not _process_alive(meta.get("pid"))
    beat = meta.get("heartbeat")
    if not beat:
        return True
    age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(str(beat))
    return age.total_seconds() > STALE_AFTER_S


def _process_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_is_free(directory: Location) -> bool | None:
    """Whether no driver on this host holds the study's file lock (taken and released at once);
    None in an object store, which has no file locks (the heartbeat decides there)."""
    from filelock import FileLock, Timeout

    if not directory.local:
        return None
    if not (directory / LOCK_FILE).exists():
        return True
    try:
        with FileLock(str((directory / LOCK_FILE).local_path), timeout=0):
            return True
    except Timeout:
        return False


def describe_driver(meta: Mapping[str, Any]) -> str:
    return (
        f"driver pid {meta.get('pid')} on {meta.get('host')}, "
        f"last heartbeat {meta.get('heartbeat') or 'never'}"
    )


def spec_changes(directory: Location, spec: StudySpec, most: int = 6) -> str:
    """What differs between the spec a study directory holds and `spec`, key by key."""
    from .config import flatten, load_yaml_text

    stored_path = directory / SPEC_FILE
    if not stored_path.is_file():
        return "its spec.yaml is missing"
    stored = flatten(load_yaml_text(stored_path.read_text(), str(stored_path)))
    new = flatten(spec.model_dump(mode="json"))
    keys = [
        k
        for k in sorted(set(stored) | set(new))
        if stored.get(k) != new.get(k) and k not in ("storage", "description")
    ]
    if not keys:
        return "the same keys, made by another cifartune version"
    shown = [f"{k}: {stored.get(k)!r} there, {new.get(k)!r} here" for k in keys[:most]]
    more = f", and {len(keys) - most} more" if len(keys) > most else ""
    return "; ".join(shown) + more


def claim(directory: Location, spec: StudySpec, resume: bool) -> dict[str, Any] | None:
    """Refuse to mix two studies in one directory; return the earlier metadata when resuming.
    Called with the directory's file lock held (local storage), so a 'running' study found
    there has no live driver on this host; in an object store the heartbeat tells."""
    previous = StudyMetadata(directory).read()
    digest = spec_hash(spec)
    if previous is None:
        if resume:
            raise ConfigError(f"--resume: {directory} holds no study to resume; run without it")
        return None
    if previous.get("spec_hash") != digest:
        raise ConfigError(
            f"{directory} holds study {previous.get('name')!r} made from another spec "
            f"({spec_changes(directory, spec)}); use another --storage or study name"
        )
    lock_free = True if directory.local else None
    if previous.get("state") == "running" and not driver_gone(previous, lock_free=lock_free):
        raise ConfigError(
            f"{directory}: the study is running ({describe_driver(previous)}); follow it with: "
            f"cifartune status {directory} (a driver that died is taken for dead "
            f"{STALE_AFTER_S:.0f} s after its last heartbeat)"
        )
    if not resume and previous.get("state") != "completed":
        stale = " (its driver is gone)" if previous.get("state") == "running" else ""
        raise ConfigError(
            f"{directory} already holds this study, {previous.get('state')}{stale}; continue it "
            f"with: cifartune resume {directory}"
        )
    if not resume:
        raise ConfigError(
            f"{directory} already holds this study, completed; see it with: "
            f"cifartune status {directory} (or use another --storage / --set name=...)"
        )
    return previous
