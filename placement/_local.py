"""A local Ray cluster whose fake nodes carry a plan's GPU types (dry runs, tests).

`ray.cluster_utils.Cluster` starts one raylet per node on this machine; each fake node
declares ``num_gpus`` and the GPU-type resource per GPU, exactly as a real node of that type
would (cluster.yaml / ``ray start --resources``), so placement groups land as they would on the
real cluster. No GPU is touched: the emulated backend uses none.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.envvars import scoped_env

from ._auth import (
    AUTH_MODE_ENV,
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    new_token_file,
    refresh_ray_auth_config,
)
from ._resources import gpu_resource
from ._serve_mode import HAPROXY_MONITOR_PORT_ENVS, haproxy_env, haproxy_wrapper_script

__all__ = ["free_port", "local_cluster", "ray_temp_dir"]

# Ray puts Unix sockets at <temp>/ray/session_<date>_<time>_<usec>_<pid>/sockets/dash_<Module>
# (and raylet.N, plasma_store.N); AF_UNIX paths end at 107 bytes, so a dashboard module fails
# to start ("AF_UNIX path length cannot exceed 107 bytes") when <temp> is longer than this.
MAX_RAY_TEMP_CHARS = 30


def free_port() -> int:
    """A TCP port that is free on this host now (for a local cluster's dashboard, Serve)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_temp_dir(preferred: str | Path) -> Path:
    """`preferred` (resolved, created) when Ray's socket paths under it fit, else a short one.

    A repository cloned at a deep path puts ``build/ray-tmp`` past the AF_UNIX limit
    (`MAX_RAY_TEMP_CHARS`); Ray then fails with a dashboard traceback. The fallback is
    ``/tmp/boute-ray-<8 hex of the preferred path>``: the same folder each time for the same
    preferred path, so sessions still accumulate in one place.
    """
    path = Path(preferred).resolve()
    if len(str(path)) > MAX_RAY_TEMP_CHARS:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        path = Path("/tmp") / f"boute-ray-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_cluster(gpus: Mapping[str, int], gpus_per_node: Mapping[str, int], *,
                  head_cpus: int = 2, cpus_per_gpu: int = 1,
                  temp_dir: str | Path | None = None, dashboard_port: int | None = None,
                  high_throughput: bool = False,
                  serve_env: Mapping[str, str] | None = None) -> Any:
    """Start a head node plus fake GPU nodes (``gpus``: type -> GPUs needed) and connect.

    Nodes of a type hold ``gpus_per_node[type]`` GPUs each (the last one what is left) and
    ``cpus_per_gpu`` logical CPUs per GPU (a vLLM replica's placement group asks for one CPU
    in its first bundle, as on a real GPU node).
    With `dashboard_port`, the head runs the dashboard there (Serve's declarative API and
    Ray jobs need it; it costs a few seconds and ~200 MB).
    With `high_throughput`, the cluster runs Serve's high-throughput mode (HAProxy ingress,
    gRPC between replicas; `placement._serve_mode`), closed as a cluster's nodes are: HAProxy
    through the hardening wrapper (`placement._haproxy`; its stats page and metrics on
    loopback, on free ports, so clusters on one machine do not collide), with `serve_env`
    (e.g. ``{"BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S": "3"}``) over the defaults.

    Ray token authentication is on: the cluster gets a fresh random token (``auth_token-*``,
    mode 0600, under `temp_dir` (or its short stand-in, `ray_temp_dir`), else a new temporary
    folder), never the user's
    ``~/.ray/auth_token``; this process stays connected with it, so `cluster_auth_token`
    returns it (Serve's REST API, the job API). Only a ``RAY_AUTH_MODE`` other than ``token``
    already set by the caller (a test) starts the cluster without authentication.

    Returns:
        The `ray.cluster_utils.Cluster`, with ``auth_token_path`` (the token file, or None
        without authentication); call ``.shutdown()`` and ``ray.shutdown()``.

    """
    import ray
    from ray.cluster_utils import Cluster

    # Each node's dashboard agent (the job API's runner) on a port of its own, not Ray's fixed
    # 52365: fake nodes, and other local clusters on this machine, would take it first.
    agent = {"dashboard_agent_listen_port": 0}
    head: dict[str, Any] = {"num_cpus": head_cpus, "num_gpus": 0,
                            "include_dashboard": dashboard_port is not None, **agent}
    if dashboard_port is not None:
        head["dashboard_port"] = dashboard_port
    if temp_dir is not None:        # Ray's files (sessions, sockets) under temp_dir/ray
        temp_dir = ray_temp_dir(temp_dir)
        os.environ["RAY_TMPDIR"] = str(temp_dir)
    # The raylets started here inherit the modes (and pass them to every worker); this process
    # gets its environment back, so a later cluster started from it (a test session) does not
    # inherit them by accident, while its Ray connection keeps the token mode and the token it
    # connected with. No load balancer stands in front of a local cluster but Serve's own
    # HAProxy, which retries a refused connection: a stopping ingress replica need not stay
    # open Serve's default 30 s.
    env: dict[str, str] = {}
    if high_throughput:
        wrapper = haproxy_wrapper_script(Path(tempfile.mkdtemp(prefix="boute-haproxy-")),
                                         sys.executable)
        env = {**haproxy_env(wrapper), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
               **{name: str(free_port()) for name in HAPROXY_MONITOR_PORT_ENVS},
               **(serve_env or {})}
    token_path, auth = _auth_env(temp_dir)
    with scoped_env({**env, **auth}):
        refresh_ray_auth_config()   # this process (the nodes' GCS client, the driver) too
        cluster: Any = Cluster(initialize_head=True, head_node_args=head)
        for gpu, n in sorted(gpus.items()):
            size = gpus_per_node[gpu]
            for k in range(math.ceil(n / size)):
                count = min(size, n - k * size)
                cluster.add_node(num_cpus=cpus_per_gpu * count, num_gpus=count,
                                 resources={gpu_resource(gpu): count}, **agent)
        ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    cluster.auth_token_path = token_path
    return cluster


def _auth_env(temp_dir: str | Path | None) -> tuple[Path | None, dict[str, str]]:
    """A fresh token file for a throw-away cluster and the environment its nodes start with.

    No token (and no change) when the caller set ``RAY_AUTH_MODE`` to something other than
    ``token`` (tests of throw-away clusters may disable authentication; BOute never does).
    """
    mode = os.environ.get(AUTH_MODE_ENV, "token")
    if mode != "token":
        return None, {}
    folder = Path(temp_dir) if temp_dir is not None else Path(tempfile.mkdtemp(prefix="boute-"))
    path = new_token_file(folder)
    env = {AUTH_MODE_ENV: "token", TOKEN_PATH_ENV: str(path)}
    if TOKEN_ENV in os.environ:     # it would win over the file: the fresh token there too
        env[TOKEN_ENV] = path.read_text()
    return path, env
