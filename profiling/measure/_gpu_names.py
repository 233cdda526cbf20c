"""GPU-name detection: the device names NVIDIA reports -> the GPU catalog's types.

``nvidia-smi`` and ``torch.cuda.get_device_properties`` report names such as ``NVIDIA GeForce
RTX 4090`` or ``NVIDIA H100 80GB HBM3``; the catalog (``profiling/data/gpus.yaml``) names
types ``RTX-4090``, ``H100``. The hardware profiler and `boute node-resources` both map names
through `gpu_type_from_name`.
"""

from __future__ import annotations

import re

__all__ = ["gpu_type_from_name"]

# (pattern on the device name, catalog type); the first match wins, so variants come first.
_PATTERNS = (
    (r"H200", "H200"),
    (r"H100.*PCIe", "H100-PCIe"),
    (r"H100", "H100"),
    (r"A100.*80\s*GB", "A100-80G"),
    (r"A100", "A100-40G"),
    (r"L40S", "L40S"),
    (r"RTX PRO 6000", "RTX-PRO-6000"),
    (r"RTX 5090", "RTX-5090"),
    (r"RTX 4090", "RTX-4090"),
)


def gpu_type_from_name(name: str) -> str | None:
    """The catalog GPU type of an NVIDIA device name, or None when it is not known."""
    for pattern, gpu in _PATTERNS:
        if re.search(pattern, name, re.IGNORECASE):
            return gpu
    return None
