"""study.json: who runs a study (host, pid, heartbeat) and in which state it is, and whether a
study marked running has lost its driver. Light on purpose (no torch, no Ray), so status views
can tell a live study from a dead driver's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from cifartune.storage import Location
from cifartune.store.layout import LOCK_FILE, STUDY_FILE
from cifartune.store.tables import atomic_write_text

# Seconds between heartbeats of a running driver, and the age past which a study whose driver
# runs on another host is taken for dead.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 4 * HEARTBEAT_S


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class StudyMetadata:
    """study.json: who runs the study (host, pid, heartbeat), in which state it is, and when
    each of its drivers ran (``runs``: started, until its last heartbeat or its end).

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
        """Update study.json (whole: one atomic replace); the heartbeat, and the end of the
        current driver's entry in ``runs`` (what a wall budget counts), are now."""
        with self._lock:
            self.data.update(updates, heartbeat=now())
            if self.data.get("runs"):
                self.data["runs"][-1]["until"] = self.data["heartbeat"]
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
