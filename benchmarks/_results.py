"""Where a benchmark's results go: the machine it ran on, its JSON, and the committed copy."""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """The platform, CPU count and Python version of this run."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def write_results(payload: dict[str, Any], out: str | Path, copy_name: str | None) -> Path:
    """Write `payload` (with ``machine``) as JSON at `out`; copy it to benchmarks/data/NAME.

    `copy_name` None: no copy (``--no-copy``, quick runs).
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1, default=str) + "\n")
    if copy_name is not None:
        shutil.copy(path, REPO / "benchmarks" / "data" / copy_name)
    return path
