"""A local Ray cluster whose fake nodes carry a plan's GPU types (dry runs, tests).

`ray.cluster_utils.Cluster` starts one raylet per node on this machine; each fake node
declares ``num_gpus`` and the GPU-type resource per GPU, exactly as a real node of that type
would (cluster.yaml / ``ray start --resources``), so placement groups land as they would on the
real cluster. No GPU is touched: the emulated backend uses none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from boute.envvars import scoped_env

from ._resources import gpu_resource
from ._serve_mode import HIGH_THROUGHPUT_ENV

__all__ = ["free_port", "local_cluster"]


def free_port() -> int:
    """A TCP port that is free on this host now (for a local cluster's dashboard, Serve)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_cluster(gpus: Mapping[str, int], gpus_per_node: Mapping[str, int], *,
                  head_cpus: int = 2, cpus_per_gpu: int = 1,
                  temp_dir: str | Path | None = None, dashboard_port: int | None = None,
                  high_throughput: bool = False) -> Any:
    """Start a head node plus fake GPU nodes (``gpus``: type -> GPUs needed) and connect.

    Nodes of a type hold ``gpus_per_node[type]`` GPUs each (the last one what is left) and
    ``cpus_per_gpu`` logical CPUs per GPU (a vLLM replica's placement group asks for one CPU
    in its first bundle, as on a real GPU node).
    With `dashboard_port`, the head runs the dashboard there (Serve's declarative API and
    Ray jobs need it; it costs a few seconds and ~200 MB).
    With `high_throughput`, the cluster runs Serve's high-throughput mode (HAProxy ingress,
    gRPC between replicas; `placement._serve_mode`).
    Returns the `ray.cluster_utils.Cluster`; call ``.shutdown()`` and ``ray.shutdown()``.
    """
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    head: dict[str, Any] = {"num_cpus": head_cpus, "num_gpus": 0,
                            "include_dashboard": dashboard_port is not None}
    if dashboard_port is not None:
        head["dashboard_port"] = dashboard_port
    if temp_dir is not None:        # Ray's files (sessions, sockets) under temp_dir/ray
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        os.environ["RAY_TMPDIR"] = str(Path(temp_dir).resolve())
    # The raylets started here inherit the mode (and pass it to every worker); this process
    # gets its environment back, so a later cluster started from it (a test session) does not
    # inherit the mode by accident. No load balancer stands in front of a local cluster but
    # Serve's own HAProxy, which retries a refused connection: a stopping ingress replica need
    # not stay open Serve's default 30 s.
    env = {**HIGH_THROUGHPUT_ENV, "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
    with scoped_env(env if high_throughput else {}):
        cluster = Cluster(initialize_head=True, head_node_args=head)
        for gpu, n in sorted(gpus.items()):
            size = gpus_per_node[gpu]
            for k in range(math.ceil(n / size)):
                count = min(size, n - k * size)
                cluster.add_node(num_cpus=cpus_per_gpu * count, num_gpus=count,
                                 resources={gpu_resource(gpu): count})
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster
