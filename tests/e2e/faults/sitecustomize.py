"""Fault injection for a real driver: a process started with this folder on PYTHONPATH and
CIFARTUNE_TEST_KILL_DURING_COMMIT set SIGKILLs itself at that moment of its first commit of
finished trials to the study's tables (Python imports ``sitecustomize`` at start-up). Only the
driver commits, so only the driver dies; the resume runs without the variable."""

import os

MOMENT = os.environ.get("CIFARTUNE_TEST_KILL_DURING_COMMIT")

if MOMENT:
    import signal

    import deltalake

    from cifartune.store import snapshot

    def _die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    _write = deltalake.write_deltalake

    def _write_then_die(*args, **kwargs):
        _write(*args, **kwargs)
        _die()

    if MOMENT == "after the epochs are committed":
        deltalake.write_deltalake = _write_then_die
    elif MOMENT == "during compaction":
        snapshot.COMPACT_AT_FILES = 1
        deltalake.DeltaTable.create_checkpoint = _die
    else:
        raise ValueError(f"CIFARTUNE_TEST_KILL_DURING_COMMIT: unknown moment {MOMENT!r}")
