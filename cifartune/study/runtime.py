"""The Ray runtime a study runs on: starting or joining it (with Ray's logs kept to one line a
record), telling whether a runtime this driver started is still alive, stopping it, and checking
that every node sees a local results directory.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from cifartune.errors import ConfigError
from cifartune.storage import Location
from cifartune.study.signals import stop_on_signals

# Ray's messages that say nothing true of a cifartune study: its restore advice (the CLI prints
# the cifartune command that resumes) and its result-file loader's complaint about trials that
# report through our Parquet files, not Ray's (a trial that failed for good has none).
SILENCED = ("Tuner.restore", "Failed to fetch metrics for")


class OneLineRayLogs(logging.Filter):
    """Ray's warnings stay visible (e.g. that no node can hold a trial), as one line each: no
    traceback of Ray internals (the trial's error file keeps it), and none of SILENCED."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(text in record.getMessage() for text in SILENCED):
            return False
        record.msg, record.args = record.getMessage().splitlines()[0], None
        record.exc_info = record.exc_text = None
        return True


# Ray's settings for a cifartune study, set where Ray is started (a user's own environment
# wins): no token-auth warning, no Ray progress tables (cifartune prints its own lines), no
# "snapshotting may become a bottleneck" warning for checkpoint-every-epoch studies, and no
# per-trial result.json/progress.csv/TensorBoard files from Ray's default loggers: the epoch
# Parquet files are the results, and Ray's files cost a write per result and, in an object
# store, an upload per trial at every experiment snapshot (requests that grow with the study).
RAY_SETTINGS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def init_ray(address: str | None, verbose: bool) -> None:
    """Start a private Ray runtime, or join `address` (or ``RAY_ADDRESS``), for this driver:
    with RAY_SETTINGS in the environment, which the runtime's processes inherit."""
    for name, value in RAY_SETTINGS.items():
        os.environ.setdefault(name, value)
    import ray

    if not verbose:
        for handler in logging.getLogger("ray").handlers:
            handler.addFilter(OneLineRayLogs())
        # Optuna's "A new study created in memory" (Ray's searcher) and "in Journal" (the
        # mirror) are not news to someone who started a study.
        logging.getLogger("optuna").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    # Trial processes' own output reaches the terminal only with -v; trial errors still do,
    # through the trial error files the driver reads. Without --address (and RAY_ADDRESS),
    # "local" starts a private runtime instead of joining whatever `ray start` left registered
    # on this machine (a stale registration makes a plain ray.init() hang).
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=verbose,
    )
    # ray.init replaces SIGTERM's handler with one that aborts the driver (leaving its worker
    # processes behind): SIGTERM (Slurm, Kubernetes, `timeout`) must stop the study like Ctrl-C.
    stop_on_signals()


def _local_runtime() -> Any:
    """Ray's node object when this driver started the runtime itself (None when it joined a
    cluster or Ray is not up)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    # A node object that only connected to a cluster has no processes of its own.
    return node if node is not None and node.all_processes else None


def local_runtime_dead() -> bool:
    """Whether the runtime this driver started has lost its GCS or raylet (a signal to the
    whole process group reaches them too)."""
    node = _local_runtime()
    if node is None:
        return False
    return any(
        info.process is not None and info.process.poll() is not None
        for kind in ("gcs_server", "raylet")
        for info in node.all_processes.get(kind, [])
    )


def stop_local_runtime() -> None:
    node = _local_runtime()
    if node is not None:
        node.kill_all_processes(check_alive=False, allow_graceful=False)


def check_results_shared(directory: Location) -> None:
    """Results on a local path must be the same directory on every node of the cluster (NFS,
    EFS): a tiny task on each node looks for a probe file written here, before any trial starts
    (otherwise a trial on a node that cannot see it fails at its first checkpoint)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not directory.local or len(nodes) < 2:
        return
    probe = directory / f"node-probe-{uuid.uuid4().hex}"
    probe.write_text("visible")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        checks = {
            f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(probe.path)
            for n in nodes
        }
        blind = [node for node, seen in checks.items() if not ray.get(seen, timeout=120)]
    finally:
        probe.unlink()
    if blind:
        raise ConfigError(
            f"storage: {directory} is a local path that these nodes cannot see: "
            f"{', '.join(blind)}; use object storage (--storage s3://bucket/prefix) or a "
            "filesystem mounted at the same path on every node (NFS, EFS)"
        )
