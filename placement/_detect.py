"""Which GPU type a node has: NVIDIA's device names -> catalog types -> Ray resources.

A node joins a BOute cluster with ``ray start ... --resources="$(boute node-resources)"``:
`node_resources` maps the names ``nvidia-smi`` reports (e.g. ``NVIDIA GeForce RTX 4090``)
to catalog types (``RTX-4090``) and returns ``{"gpu_type_RTX-4090": 8}``, so one start command
serves every node of a mixed rack.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence

from profiling.measure import gpu_type_from_name

from ._resources import gpu_resource
from ._specs import PlacementError

__all__ = ["gpu_type_from_name", "local_gpu_names", "node_resources"]

def node_resources(names: Sequence[str], override: str | None = None) -> dict[str, int]:
    """Ray custom resources of a node with GPUs `names` (``{}`` without GPUs).

    Args:
        names: one device name per GPU, as ``nvidia-smi --query-gpu=name`` prints them.
        override: the catalog type to declare for all of them (for devices not recognized).

    Raises:
        PlacementError: a device name matches no known type and no override is given.

    """
    counts: Counter[str] = Counter()
    for name in names:
        gpu = override or gpu_type_from_name(name)
        if gpu is None:
            raise PlacementError(f"GPU {name!r} is not a known type; pass --gpu-type TYPE "
                                 "(a name of your GPU catalog)")
        counts[gpu_resource(gpu)] += 1
    return dict(counts)


def local_gpu_names() -> list[str]:
    """Device names of this machine's NVIDIA GPUs (empty without ``nvidia-smi``)."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise PlacementError(f"nvidia-smi failed: {out.stderr.strip()}")
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]
