"""GPU-type resource names: the one place that maps a catalog GPU type to a Ray resource.

Every node of a BOute cluster declares, besides Ray's ``GPU``, one custom resource per GPU type
it carries, counted per GPU (an 8xH100 node: ``{"GPU": 8, "gpu_type_H100": 8}``); every bundle
of a replica asks for ``{"GPU": 1, "gpu_type_<type>": 1}``, so a placement group can only land
on GPUs of the planned type. (Ray's own ``accelerator_type:*`` resource is 1 per node and does
not know RTX 4090/5090, hence our own names.)
"""

from __future__ import annotations

import re

__all__ = ["RESOURCE_PREFIX", "gpu_resource", "gpu_type_of"]

RESOURCE_PREFIX = "gpu_type_"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def gpu_resource(gpu_type: str) -> str:
    """The Ray resource name of a GPU type, e.g. ``gpu_type_RTX-4090``.

    Raises:
        ValueError: the type name has characters a resource name should not carry.

    """
    if not _SAFE.match(gpu_type):
        raise ValueError(f"gpu type {gpu_type!r} cannot name a Ray resource; use letters, "
                         "digits, '.', '_' and '-'")
    return RESOURCE_PREFIX + gpu_type


def gpu_type_of(resource: str) -> str | None:
    """The GPU type a resource name stands for, or None for other resources."""
    return resource[len(RESOURCE_PREFIX):] if resource.startswith(RESOURCE_PREFIX) else None
