"""Plan -> Ray placement: GPU-type resources, deployment specs, cluster fit checks.

Also the perf DB build as Ray tasks (`ray_config_mapper`).
"""

from ._auth import (
    TOKEN_FIX,
    RayAuthError,
    auth_headers,
    cluster_auth_token,
    connect,
    connect_hint,
    find_auth_token,
    use_token_if_available,
)
from ._cluster import Shortfall, check_fit, gpu_counts_in, gpu_types_in, live_nodes
from ._detect import gpu_type_from_name, local_gpu_names, node_resources
from ._local import free_port, local_cluster, ray_temp_dir
from ._perfdb_ray import ray_config_mapper
from ._resources import RESOURCE_PREFIX, gpu_resource, gpu_type_of
from ._serve_mode import HIGH_THROUGHPUT_ENV
from ._specs import LANE_SEPARATOR, GroupSpec, Lane, PlacementError, group_specs

__all__ = [
    "HIGH_THROUGHPUT_ENV",
    "LANE_SEPARATOR",
    "RESOURCE_PREFIX",
    "TOKEN_FIX",
    "GroupSpec",
    "Lane",
    "PlacementError",
    "RayAuthError",
    "Shortfall",
    "auth_headers",
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
    "live_nodes",
    "local_cluster",
    "local_gpu_names",
    "node_resources",
    "ray_config_mapper",
    "ray_temp_dir",
    "use_token_if_available",
]
