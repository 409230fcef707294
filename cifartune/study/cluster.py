"""Fail fast when no node of the Ray cluster can ever hold one trial.

Ray queues a trial whose resources no node has and waits for a node that never comes: the study
hangs, and Tune's warning about it (after a minute) says to ignore it on autoscaling clusters. So
before any trial starts, one trial's CPUs and GPUs are compared with the cluster's alive nodes and,
when the cluster autoscales, with the node types its autoscaler may start. A trial must fit on one
node: Ray does not split an actor's resources across nodes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifartune.errors import ConfigError

log = logging.getLogger(__name__)
# Where `ray up` leaves the cluster launcher's resolved config on the head node (the autoscaler
# reads it there); a driver started by `cifartune submit` or on `ray attach` runs on the head.
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")
# KubeRay sets this in every Ray container; its autoscaler's worker groups are not visible to Ray.
KUBERAY_ENV = "RAY_CLUSTER_NAME"


@dataclass(frozen=True)
class NodeShape:
    """A node (alive now) or a node type (that an autoscaler may start) and what it offers."""

    name: str
    cpus: float
    gpus: float
    max_count: int | None = None  # node types only: how many may run; -1 means no limit

    def holds(self, cpus: float, gpus: float) -> bool:
        return self.cpus >= cpus and self.gpus >= gpus

    def describe(self) -> str:
        count = "" if self.max_count in (None, -1) else f", up to {self.max_count}"
        return f"{self.name} ({self.cpus:g} CPUs, {self.gpus:g} GPUs{count})"


@dataclass(frozen=True)
class NodeTypes:
    shapes: list[NodeShape]
    source: str  # where they were read, for the message


def fit_error(
    cpus: float, gpus: float, nodes: Sequence[NodeShape], types: NodeTypes | None
) -> str | None:
    """The message saying why no node can ever hold a trial of `cpus` + `gpus`, or None if one
    can (an alive node now, or a node type the autoscaler may start)."""
    if _fits_any(cpus, gpus, [*nodes, *(types.shapes if types else [])]):
        return None
    exists = "its nodes: " + ("; ".join(n.describe() for n in nodes) or "none alive")
    if types is not None:
        kinds = "; ".join(t.describe() for t in types.shapes) or "none"
        exists += f"; node types its autoscaler may start ({types.source}): {kinds}"
    return (
        f"no node of this Ray cluster can ever hold one trial (resources.cpus = {cpus:g}, "
        f"resources.gpus = {gpus:g} per trial), so the study would wait forever. What exists: "
        f"{exists}. Fix: lower resources.cpus / resources.gpus in the spec (e.g. --set "
        "resources.gpus=0 on a CPU-only cluster), or add a node or node type that has them"
    )


def check_trials_fit(cpus: float, gpus: float) -> None:
    """Raise ConfigError if no node of the cluster Ray is connected to can ever run one trial.

    With Ray initialized. Node types come from the autoscaling state in the GCS or, on a
    cluster-launcher head, from its bootstrap config; on an autoscaling cluster whose node types
    cannot be read (KubeRay), nothing is refused: a node that fits may still come."""
    nodes = live_nodes()
    types = node_types()
    if types is None and os.environ.get(KUBERAY_ENV) and not _fits_any(cpus, gpus, nodes):
        log.warning(
            "no alive node can hold one trial (resources.cpus = %g, resources.gpus = %g); "
            "waiting for KubeRay's autoscaler to add one (its worker groups are not visible here)",
            cpus,
            gpus,
        )
        return
    message = fit_error(cpus, gpus, nodes, types)
    if message is not None:
        raise ConfigError(message)


def _fits_any(cpus: float, gpus: float, shapes: Iterable[NodeShape]) -> bool:
    return any(shape.holds(cpus, gpus) for shape in shapes)


def live_nodes() -> list[NodeShape]:
    import ray

    shapes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        head = " [head]" if "node:__internal_head__" in resources else ""
        shapes.append(
            NodeShape(
                f"node {node.get('NodeManagerAddress', '?')}{head}",
                float(resources.get("CPU", 0)),
                float(resources.get("GPU", 0)),
            )
        )
    return shapes


def node_types() -> NodeTypes | None:
    """The node types an autoscaler may start, or None when the cluster publishes none."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        shapes = [
            NodeShape(
                group.name,
                float(group.resources.get("CPU", 0)),
                float(group.resources.get("GPU", 0)),
                group.max_count,
            )
            for group in config.node_group_configs
            if group.max_count != 0
        ]
        return NodeTypes(shapes, "the GCS autoscaling state")
    path = LAUNCHER_CONFIG.expanduser()
    if path.is_file():
        return launcher_node_types(yaml.safe_load(path.read_text()) or {}, str(LAUNCHER_CONFIG))
    return None


def launcher_node_types(config: Mapping[str, Any], source: str) -> NodeTypes | None:
    """Node types of a cluster-launcher config (`available_node_types`): the head type and every
    worker type that may have workers. None if a type's resources are not given (then they are
    unknown here, and nothing can be refused)."""
    head = config.get("head_node_type")
    shapes = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        resources = node_type.get("resources")
        if resources is None:
            return None
        count = 1 if name == head else int(node_type.get("max_workers", 0))
        if count == 0:
            continue
        shapes.append(
            NodeShape(name, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), count)
        )
    return NodeTypes(shapes, source) if shapes else None
