"""Does a plan fit a cluster? Shortfalls per GPU type, with node packing.

`check_fit` is pure (nodes given as resource dicts, as ``ray.nodes()`` reports them);
`live_nodes` reads them from the running Ray cluster; `capacity_nodes` adds the nodes its
autoscaler may still launch (`launchable_nodes`: a cluster made by ``ray up cluster.yaml``
starts without GPU workers); `target_nodes` reads them from the cluster a ``ray.init`` here
would reach (what ``serve run`` is about to deploy on).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ._resources import gpu_resource, gpu_type_of
from ._specs import GroupSpec

__all__ = ["BOOTSTRAP_CONFIG", "OVERRIDE_RESOURCES_ENV", "ClusterTarget", "Shortfall",
           "capacity_nodes", "check_fit", "gpu_counts_in", "gpu_types_in", "launchable_nodes",
           "live_nodes", "nodes_of_node_types", "target_nodes"]

OVERRIDE_RESOURCES_ENV = "RAY_OVERRIDE_RESOURCES"
"""Ray reads a new local node's resources from this (JSON) on top of what it detects."""

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
"""Where ``ray up`` leaves the cluster config on the head node (its autoscaler reads it)."""


@dataclass(frozen=True)
class Shortfall:
    """Why the GPUs of one type do not suffice."""

    gpu: str
    needed: int
    available: int
    detail: str

    def __str__(self) -> str:
        return (f"{self.gpu}: the plan needs {self.needed} GPU(s), the cluster has "
                f"{self.available}; {self.detail}")


def check_fit(specs: Sequence[GroupSpec], nodes: Sequence[Mapping[str, float]]
              ) -> list[Shortfall]:
    """Shortfalls of the cluster `nodes` for `specs` (empty when the plan fits).

    Per GPU type: total GPUs, then a first-fit-decreasing packing of the STRICT_PACK replicas
    (each needs ``tp*pp`` GPUs of its type on one node); PACK replicas take what is left.
    """
    out = []
    for gpu in sorted({s.gpu for s in specs}):
        res = gpu_resource(gpu)
        free = sorted((int(n.get(res, 0)) for n in nodes if n.get(res, 0) >= 1), reverse=True)
        mine = [s for s in specs if s.gpu == gpu]
        needed = sum(s.gpus_per_replica * s.replicas for s in mine)
        if needed > sum(free):
            out.append(Shortfall(gpu, needed, sum(free),
                                 f"add {needed - sum(free)} {gpu} GPU(s) (nodes declare the "
                                 f"resource {res!r} per GPU)"))
            continue
        sizes = sorted((s.gpus_per_replica for s in mine if s.strategy == "STRICT_PACK"
                        for _ in range(s.replicas)), reverse=True)
        for size in sizes:
            slot = next((k for k, f in enumerate(free) if f >= size), None)
            if slot is None:
                out.append(Shortfall(gpu, needed, sum(free),
                                     f"a replica needs {size} {gpu} GPUs on one node and no node"
                                     f" has that many left (largest free: "
                                     f"{max(free, default=0)})"))
                break
            free[slot] -= size
    return out


def live_nodes() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive")]


def nodes_of_node_types(node_types: Mapping[str, Mapping[str, object]]
                        ) -> list[dict[str, float]]:
    """The worker nodes an autoscaler may launch: ``max_workers`` nodes of each node type.

    `node_types` is cluster.yaml's ``available_node_types`` (each with ``resources`` and
    ``max_workers``); a type without resources or with ``max_workers`` 0 adds nothing.
    """
    out: list[dict[str, float]] = []
    for spec in node_types.values():
        resources = spec.get("resources") or {}
        count = spec.get("max_workers") or 0
        if not isinstance(resources, Mapping) or not isinstance(count, int):
            continue
        node = {str(k): float(v) for k, v in resources.items()
                if isinstance(v, int | float)}
        if node:
            out += [dict(node) for _ in range(max(0, count))]
    return out


def launchable_nodes(bootstrap_config: str = BOOTSTRAP_CONFIG) -> list[dict[str, float]]:
    """Nodes the connected cluster's autoscaler may still launch (none without one).

    From the autoscaler's cluster config in the GCS (node groups with their ``max_count``,
    as autoscaler v2 reports them), else from `bootstrap_config` (the config ``ray up`` put on
    the head: `nodes_of_node_types`). Lenient: a type's running nodes are not subtracted, so
    a plan that passes may still wait for the autoscaler; one that fails cannot be placed.
    """
    import ray

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:      # no GCS client (not connected) or an older GCS: no v2 config
        config = None
    if config is not None and config.node_group_configs:
        return [{str(k): float(v) for k, v in group.resources.items()}
                for group in config.node_group_configs
                for _ in range(max(0, group.max_count if group.max_count >= 0 else 0))]
    path = os.path.expanduser(bootstrap_config)
    if not os.path.isfile(path):
        return []
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return []
    types = doc.get("available_node_types") if isinstance(doc, dict) else None
    return nodes_of_node_types(types) if isinstance(types, dict) else []


def capacity_nodes() -> list[dict[str, float]]:
    """The connected cluster's alive nodes plus those its autoscaler may launch."""
    return live_nodes() + launchable_nodes()


class ClusterTarget(NamedTuple):
    """The cluster a ``ray.init`` here would use: its nodes, its name, whether it is new."""

    nodes: list[dict[str, float]]
    name: str
    new_local: bool = False


def target_nodes(address: str | None = None, environ: Mapping[str, str] | None = None
                 ) -> ClusterTarget:
    """The nodes of the cluster ``ray.init(address)`` from this process would use, and its name.

    - Connected already: that cluster's alive nodes and those its autoscaler may launch
      (`capacity_nodes`).
    - `address`, else ``RAY_ADDRESS``, else the local cluster ``ray start`` recorded (Ray's
      own lookup): connect (`connect`, token file made 0600), read the nodes, disconnect.
    - None of them: ``ray.init`` would start a new local Ray, whose one node declares no
      custom resource but those of ``RAY_OVERRIDE_RESOURCES`` (JSON); that node is returned.

    Returns:
        The nodes (resource dicts as `live_nodes` gives them), a name for error messages,
        and whether it is the new local Ray (`ClusterTarget`).

    Raises:
        RayAuthError: the address is unreachable or refuses this client's token.

    """
    import ray

    if ray.is_initialized():
        return ClusterTarget(capacity_nodes(), "the connected Ray cluster")
    env = os.environ if environ is None else environ
    found = address or env.get("RAY_ADDRESS") or None
    if found is None:
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
    if found is None or found == "local":
        raw = env.get(OVERRIDE_RESOURCES_ENV) or "{}"
        try:
            override = {str(k): float(v) for k, v in dict(json.loads(raw)).items()}
        except (ValueError, TypeError):
            override = {}
        return ClusterTarget([override], "a new local Ray (no Ray cluster runs here and "
                             "RAY_ADDRESS is unset: one would be started, without GPU-type "
                             "resources)", new_local=True)
    from ._auth import connect

    connect(str(found), "start it, or point RAY_ADDRESS (or --address) at a running cluster")
    try:
        return ClusterTarget(capacity_nodes(), f"the Ray cluster at {found}")
    finally:
        ray.shutdown()


def _node_gpus(nodes: Sequence[Mapping[str, float]]) -> Iterator[tuple[str, int]]:
    """(GPU type, GPUs) of every GPU-type resource of every node."""
    for n in nodes:
        for key, value in n.items():
            t = gpu_type_of(key)
            if t is not None:
                yield t, int(value)


def gpu_types_in(nodes: Sequence[Mapping[str, float]]) -> dict[str, int]:
    """GPU type -> largest count on one node (the node size used for packing)."""
    out: dict[str, int] = {}
    for t, count in _node_gpus(nodes):
        out[t] = max(out.get(t, 0), count)
    return out


def gpu_counts_in(nodes: Sequence[Mapping[str, float]]) -> dict[str, int]:
    """GPU type -> GPUs of that type on the whole cluster."""
    out: dict[str, int] = {}
    for t, count in _node_gpus(nodes):
        out[t] = out.get(t, 0) + count
    return out
