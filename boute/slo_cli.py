"""`boute slo`: measured SLO attainment from the request log ("P95 <= L in X% of windows").

    boute slo --log build/request-log --p95 30 --window-s 300 [--since-s 3600]

Windows are ``window_s`` long from the first logged arrival (`tuning.attainment`); a request
that did not succeed (429s and errors included) counts as a miss (infinite latency). Printed
for the whole system and for every replica group, with the P95 of each.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from common.errors import BouteError

__all__ = ["add_slo", "log_attainment"]


def add_slo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute slo`."""
    p = sub.add_parser("slo", help="measured SLO attainment (P95 per time window) from the "
                       "request log")
    p.add_argument("--log", default="build/request-log", help="the request log's folder")
    p.add_argument("--p95", type=float, required=True, help="the P95 each window must meet, s")
    p.add_argument("--window-s", type=float, default=300.0, help="window length, s "
                   "(default 300)")
    p.add_argument("--since-s", type=float, default=None, help="only the last SEC seconds "
                   "of the log (default: all of it)")
    p.set_defaults(run=_run_slo)


def log_attainment(log_dir: str, p95_s: float, window_s: float,
                   since_s: float | None = None, now_s: float | None = None
                   ) -> dict[str, Any]:
    """Attainment of the system and of each group over the log (module docstring).

    Raises:
        BouteError: no readable request log at `log_dir`.

    """
    from app.request_log import read_log
    from tuning import attainment

    now = time.time() if now_s is None else now_s
    try:
        table = read_log(log_dir, since_s=None if since_s is None else now - since_s)
    except FileNotFoundError as exc:
        raise BouteError(f"--log={log_dir!r}: {exc}") from None
    arrival = np.asarray(table.column("arrival_s").to_numpy(zero_copy_only=False), float)
    status = np.asarray(table.column("status").to_numpy(zero_copy_only=False))
    latency = np.asarray(table.column("latency_s").to_numpy(zero_copy_only=False), float)
    latency = np.where((status == 200) & np.isfinite(latency), latency, np.inf)
    groups = np.asarray(table.column("group").to_pylist(), dtype=object)

    def block(mask: np.ndarray) -> dict[str, Any]:
        share, windows = attainment(arrival[mask], latency[mask], p95_s, window_s)
        lat = latency[mask]
        return {"requests": int(mask.sum()), "attainment": share, "windows": windows,
                "p95_s": float(np.quantile(lat, 0.95)) if lat.size else None}

    every = np.ones(len(arrival), dtype=bool)
    return {"p95_s": p95_s, "window_s": window_s, "system": block(every),
            "groups": {str(g): block(groups == g) for g in sorted({str(x) for x in groups
                                                                   if x})}}


def _run_slo(args: argparse.Namespace) -> int:
    from boute._shared import emit

    for flag, value in (("--p95", args.p95), ("--window-s", args.window_s),
                        ("--since-s", args.since_s)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise BouteError(f"{flag}={value:g} must be a positive number of seconds")
    out = log_attainment(args.log, args.p95, args.window_s, args.since_s)

    def human() -> str:
        lines = [f"SLO: P95 <= {out['p95_s']:g} s per {out['window_s']:g} s window",
                 f"{'':40s}{'requests':>9}{'windows':>8}{'attained':>9}{'P95 s':>8}"]
        for name, b in [("system", out["system"]), *out["groups"].items()]:
            p95 = "-" if b["p95_s"] is None else f"{b['p95_s']:.2f}"
            lines.append(f"{name[:40]:40s}{b['requests']:>9}{b['windows']:>8}"
                         f"{b['attainment']:>9.1%}{p95:>8}")
        return "\n".join(lines)

    emit(args, out, human)
    return 0
