"""Plan -> Ray placement: GPU-type resources, deployment specs, cluster fit checks."""

from ._cluster import Shortfall, check_fit, gpu_types_in, live_nodes
from ._local import local_cluster
from ._resources import RESOURCE_PREFIX, gpu_resource, gpu_type_of
from ._specs import GroupSpec, PlacementError, group_specs

__all__ = [
    "RESOURCE_PREFIX",
    "GroupSpec",
    "PlacementError",
    "Shortfall",
    "check_fit",
    "gpu_resource",
    "gpu_type_of",
    "gpu_types_in",
    "group_specs",
    "live_nodes",
    "local_cluster",
]
