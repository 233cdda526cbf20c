"""What the command modules share: JSON-or-text output and the flags several commands take.

The command modules import this and nothing of each other; `boute.cli` assembles them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import BouteError

__all__ = [
    "DEFAULT_KEY", "MAX_GENERATED_REQUESTS", "add_catalog_args", "add_hardware_profiles_arg",
    "bench_api_key", "check_requests", "emit", "fmt", "json_safe", "parse_levels", "stderr_note",
]


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: inf/nan become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], str]) -> None:
    """Print `payload` as one JSON object under ``--json``, else the human text `human()`."""
    if args.json:
        print(json.dumps(json_safe(payload)))
    else:
        print(human())


def add_catalog_args(p: argparse.ArgumentParser) -> None:
    """Add ``--gpu-catalog FILE`` and ``--model-catalog FILE`` (repeatable)."""
    p.add_argument("--gpu-catalog", action="append", default=[], metavar="FILE",
                   help="extra GPU catalog YAML (adds or overrides entries by name)")
    p.add_argument("--model-catalog", action="append", default=[], metavar="FILE",
                   help="extra model catalog YAML")


def add_hardware_profiles_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--hardware-profiles DIR``: where the stage-1 model looks for hardware profiles."""
    p.add_argument("--hardware-profiles", default=None, metavar="DIR",
                   help="folder of hardware profiles (`boute profile hardware` writes "
                   "build/calibration/<device>/) or one profile directory: GPU types with a "
                   "profile there use the efficiency fitted on it (default: the scenario's "
                   "profile.hardware_profiles, else none: spec-sheet roofline)")


def stderr_note(text: str) -> None:
    """Print a one-line note for the user on stderr (``boute: ...``)."""
    print(f"boute: {text}", file=sys.stderr)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> str:
    """Lay out `fig`, write it as PNG at `path` (parent folders made), close it; the path."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)


MAX_GENERATED_REQUESTS = 10_000_000
"""Most requests `boute simulate` and `boute trace` generate: their columns alone are
~240 MB (three 8-byte numbers per request), the simulator's state several times that."""


def check_requests(n: int, flag: str) -> None:
    """Check a generated request count: in [1, `MAX_GENERATED_REQUESTS`].

    Raises:
        BouteError: naming `flag`, the value and the bound.

    """
    if not 1 <= n <= MAX_GENERATED_REQUESTS:
        raise BouteError(f"{flag}={n} must be >= 1 and <= {MAX_GENERATED_REQUESTS:,}")


def fmt(x: float, spec: str = ".2f") -> str:
    return "inf" if not math.isfinite(x) else format(x, spec)


def parse_levels(flag: str, text: str, kind: type[float] | type[int]) -> tuple[Any, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; an empty string -> ``()``.

    Raises:
        BouteError: an item is not a number of `kind`.

    """
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            out.append(kind(item))
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise BouteError(f"{flag}={text!r}: {item!r} is not {what}; "
                             f"give a comma-separated list like {flag} 1,2,4") from None
    return tuple(out)


DEFAULT_KEY = Path("build") / "api-key"
"""The key `boute deploy` saves for its own bench (``--api-key`` and ``BOUTE_API_KEY`` first)."""


def bench_api_key(args: argparse.Namespace) -> str | None:
    """The API key a bench sends: ``--api-key``, else ``BOUTE_API_KEY``, else `DEFAULT_KEY`'s."""
    import os

    if args.api_key:
        return str(args.api_key)
    if os.environ.get("BOUTE_API_KEY"):
        return os.environ["BOUTE_API_KEY"]
    return DEFAULT_KEY.read_text().strip() if DEFAULT_KEY.is_file() else None
