"""Fault injection for a committing process: one started with this folder on PYTHONPATH and
KILL_DURING_COMMIT (below) set SIGKILLs itself at that moment of its first commit of finished
trials to the study's tables (Python imports ``sitecustomize`` at start-up). In a study only
the driver commits, so only the driver dies; its resume runs without the variable."""

import os

KILL_DURING_COMMIT = "CIFARTUNE_TEST_KILL_DURING_COMMIT"
MOMENT = os.environ.get(KILL_DURING_COMMIT)

if MOMENT:
    import signal

    import deltalake

    from cifartune.store import committer, snapshot

    def _die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    _write = deltalake.write_deltalake

    def _write_then_die(*args, **kwargs):
        _write(*args, **kwargs)
        _die()

    if MOMENT == "after the epochs are committed":
        deltalake.write_deltalake = _write_then_die
    elif MOMENT == "before the files are deleted":
        committer.delete_files = _die
    elif MOMENT == "during compaction":
        snapshot.COMPACT_AT_FILES = 1
        deltalake.DeltaTable.create_checkpoint = _die
    else:
        raise ValueError(f"{KILL_DURING_COMMIT}: unknown moment {MOMENT!r}")
