"""Plan -> Ray placement: GPU-type resources, deployment specs, cluster fit checks.

Also the perf DB build as Ray tasks (`ray_config_mapper`).
"""

from ._auth import (
    AUTH_MODE_ENV,
    TOKEN_ENV,
    TOKEN_FIX,
    TOKEN_PATH_ENV,
    RayAuthError,
    auth_headers,
    cluster_auth_token,
    connect,
    connect_hint,
    find_auth_token,
    new_token_file,
    secure_token_file,
    use_token_if_available,
)
from ._cluster import (
    BOOTSTRAP_CONFIG,
    ClusterTarget,
    Shortfall,
    capacity_nodes,
    check_fit,
    gpu_counts_in,
    gpu_types_in,
    launchable_nodes,
    live_nodes,
    nodes_of_node_types,
    target_nodes,
)
from ._detect import gpu_type_from_name, local_gpu_names, node_resources
from ._local import MAX_RAY_TEMP_CHARS, free_port, local_cluster, ray_temp_dir
from ._perfdb_ray import ray_config_mapper
from ._resources import RESOURCE_PREFIX, gpu_resource, gpu_type_of
from ._serve_mode import (
    HAPROXY_BINARY_ENV,
    HAPROXY_MONITOR_PORT_ENVS,
    HIGH_THROUGHPUT_ENV,
    haproxy_env,
)
from ._specs import LANE_SEPARATOR, GroupSpec, Lane, PlacementError, group_specs

__all__ = [
    "AUTH_MODE_ENV",
    "BOOTSTRAP_CONFIG",
    "HAPROXY_BINARY_ENV",
    "HAPROXY_MONITOR_PORT_ENVS",
    "HIGH_THROUGHPUT_ENV",
    "LANE_SEPARATOR",
    "MAX_RAY_TEMP_CHARS",
    "RESOURCE_PREFIX",
    "TOKEN_ENV",
    "TOKEN_FIX",
    "TOKEN_PATH_ENV",
    "ClusterTarget",
    "GroupSpec",
    "Lane",
    "PlacementError",
    "RayAuthError",
    "Shortfall",
    "auth_headers",
    "capacity_nodes",
    "check_fit",
    "cluster_auth_token",
    "connect",
    "connect_hint",
    "find_auth_token",
    "free_port",
    "gpu_counts_in",
    "gpu_resource",
    "gpu_type_from_name",
    "gpu_type_of",
    "gpu_types_in",
    "group_specs",
    "haproxy_env",
    "launchable_nodes",
    "live_nodes",
    "local_cluster",
    "local_gpu_names",
    "new_token_file",
    "node_resources",
    "nodes_of_node_types",
    "ray_config_mapper",
    "ray_temp_dir",
    "secure_token_file",
    "target_nodes",
    "use_token_if_available",
]
