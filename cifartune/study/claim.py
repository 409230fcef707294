"""Who may run a study in a results directory: the claim that refuses to mix two studies or two
drivers there, and the check that the directory is writable.
"""

from __future__ import annotations

from typing import Any

from cifartune.config.resolved import ResolvedSpec
from cifartune.config.spec import StudySpec
from cifartune.errors import ConfigError
from cifartune.storage import Location
from cifartune.store.directory import StudyDirectory
from cifartune.store.metadata import STALE_AFTER_S, StudyMetadata, describe_driver, driver_gone


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


def spec_changes(directory: Location, spec: StudySpec, most: int = 6) -> str:
    """What differs between the spec a study directory holds and `spec`, key by key."""
    from cifartune.config.base import flatten

    tree = StudyDirectory(directory).spec_tree()
    if not tree:
        return "its spec.yaml is missing"
    stored = flatten(tree)
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


def claim(directory: Location, spec: ResolvedSpec, resume: bool) -> dict[str, Any] | None:
    """Refuse to mix two studies in one directory; return the earlier metadata when resuming.
    Called with the directory's file lock held (local storage), so a 'running' study found
    there has no live driver on this host; in an object store the heartbeat tells."""
    previous = StudyMetadata(directory).read()
    if previous is None:
        if resume:
            raise ConfigError(f"--resume: {directory} holds no study to resume; run without it")
        return None
    if previous.get("spec_hash") != spec.hash:
        raise ConfigError(
            f"{directory} holds study {previous.get('name')!r} made from another spec "
            f"({spec_changes(directory, spec.spec)}); use another --storage or study name"
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
