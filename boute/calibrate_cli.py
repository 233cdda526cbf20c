"""`boute calibrate`: fit the stage-1 model on what the deployment served (the request log).

    boute calibrate --log build/request-log [--since 1800] [--plan build/plan.json]
                    --out build/calibration/served.json

Reads the window's successful requests (outcome ``ok``), splits them by replica group, replays
each group's arrivals and lengths through the simulator and fits each GPU type's efficiency
scale and engine step overhead and each group's front-end latency (`profiling.measure.
fit_served`). Writes the served calibration (`profiling._served`; `boute profile` /
`boute plan` ``--calibration FILE`` or the scenario's ``profile.served_calibration`` use it)
and prints the fidelity table per group: observed versus predicted P50 / P95 / mean of
latency and TTFT, before (the offline model) and after.

The window is the last ``--since`` seconds before ``--now`` (default: the newest logged
arrival, so an old log calibrates as well as a live one). Group names are the plan's
(``<model>-<gpu>-tp<T>pp<P>``); ``--plan`` gives each group's replica count (without it, every
group is taken as one replica: a group of several replicas then looks slower per replica
than it is; pass the plan).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from boute._shared import add_catalog_args, add_hardware_profiles_arg, emit
from common.errors import BouteError, ProfilerError

__all__ = ["add_calibrate"]

def add_calibrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute calibrate`."""
    p = sub.add_parser("calibrate", help="fit the performance model on served traffic (the "
                       "request log): efficiency scale, engine overhead, front-end latency")
    p.add_argument("--log", default="build/request-log", help="the request log's folder")
    p.add_argument("--since", type=float, default=None, metavar="S", help="the window: the "
                   "last S seconds before --now (default: the whole log)")
    p.add_argument("--now", type=float, default=None, help="unix time the window ends at "
                   "(default: the newest logged arrival)")
    p.add_argument("--plan", default=None, help="the plan that served the window (its "
                   "groups' replica counts)")
    p.add_argument("--out", required=True, help="calibration file to write (JSON)")
    p.add_argument("--engine", default="vllm", help="engine profile the groups ran "
                   "(scheduler limits; the starting overheads)")
    p.add_argument("--min-requests", type=int, default=50, help="fewest successful requests "
                   "a group needs in the window to be fitted (others are skipped, named)")
    p.add_argument("--bootstrap", type=int, default=8, help="block-bootstrap refits for the "
                   "spread (0: none)")
    p.add_argument("--blocks", type=int, default=8, help="time blocks of the bootstrap")
    p.add_argument("--seed", type=int, default=0)
    add_hardware_profiles_arg(p)
    add_catalog_args(p)
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from app.request_log import read_log
    from profiling import engine_profile, load_catalog, resolve_calibration
    from profiling.measure import fit_served, served_groups

    for flag, value, low in (("--min-requests", args.min_requests, 1),
                             ("--bootstrap", args.bootstrap, 0), ("--blocks", args.blocks, 1)):
        if value < low:
            raise BouteError(f"{flag}={value} must be >= {low}")
    if args.since is not None and not (args.since > 0 and math.isfinite(args.since)):
        raise BouteError(f"--since={args.since} must be a positive number of seconds")
    try:
        engine = engine_profile(args.engine)
    except KeyError as exc:
        raise BouteError(f"--engine: {exc.args[0]}") from None
    catalog = load_catalog(args.gpu_catalog, args.model_catalog)
    try:
        table = read_log(args.log)
    except FileNotFoundError as exc:
        raise BouteError(f"--log={args.log!r}: {exc}") from None
    arrivals = np.asarray(table.column("arrival_s").to_numpy(zero_copy_only=False), float)
    now = args.now if args.now is not None else float(np.nanmax(arrivals))
    start = now - args.since if args.since is not None else float(np.nanmin(arrivals))
    window = (arrivals >= start) & (arrivals <= now)
    table = table.filter(window)
    replicas = _plan_replicas(args.plan)
    cols = {n: table.column(n).to_numpy(zero_copy_only=False) for n in
            ("arrival_s", "prompt_tokens", "output_tokens", "ttft_s", "latency_s", "stream",
             "outcome", "group")}
    try:
        groups, notes = served_groups(cols, catalog, replicas, args.min_requests)
    except ProfilerError as exc:
        raise BouteError(str(exc)) from None
    if not groups:
        raise BouteError(f"--log={args.log!r}: no replica group served --min-requests="
                         f"{args.min_requests} successful requests between {start:.0f} and "
                         f"{now:.0f} (unix s); widen --since or lower --min-requests")
    base = resolve_calibration(list({g.gpu.name: g.gpu for g in groups}.values()),
                               args.hardware_profiles)
    cal = fit_served(groups, engine=engine, base_efficiency=base.efficiency,
                     bootstrap=args.bootstrap, blocks=args.blocks, seed=args.seed,
                     window=(start, now))
    path = cal.save(args.out)
    payload = {"out": str(path), "sha256": cal.sha256, "label": cal.label, "notes": notes,
               "base_efficiency_source": base.source, **cal.to_json()}
    emit(args, payload, lambda: _human(payload))
    return 0


def _plan_replicas(path: str | None) -> dict[str, int]:
    """Group name -> replicas of the plan at `path` (empty without one)."""
    if path is None:
        return {}
    from tuning import Plan

    return {g.name: g.replicas for g in Plan.load(path).groups}


def _human(p: dict[str, Any]) -> str:
    lines = [f"served calibration {p['out']} ({p['label']}, sha256 {p['sha256']}, "
             f"{p['window']['requests']} requests, fit {p['fit']['fit_seconds']:.1f} s + "
             f"bootstrap {p['fit']['bootstrap_seconds']:.1f} s)"]
    lines += [f"note: {n}" for n in p["notes"]]
    for gpu, row in p["gpus"].items():
        lines.append(f"{gpu}: efficiency scale {row['scale']:.3f} (p05-p95 "
                     f"{row['scale_p05']:.3f}-{row['scale_p95']:.3f}) x "
                     f"{p['base_efficiency_source'].get(gpu, 'spec-sheet')}")
    lines.append(f"{'group':<30}{'repl':>5}{'req/s':>7}{'step ms':>9}{'front ms':>10}")
    for g in p["groups"]:
        name = f"{g['model']}-{g['gpu']}-tp{g['tp']}pp{g['pp']}"
        lines.append(f"{name:<30}{g['replicas']:>5}{g['rate_rps']:>7.2f}"
                     f"{g['step_overhead_s'] * 1e3:>9.2f}{g['frontend_latency_s'] * 1e3:>10.1f}")
    lines.append("fidelity (predicted / observed - 1):")
    lines.append(f"{'group':<30}{'metric':<18}{'observed':>10}{'before':>9}{'after':>9}")
    for g in p["groups"]:
        name = f"{g['model']}-{g['gpu']}-tp{g['tp']}pp{g['pp']}"
        for metric, row in g["fidelity"].items():
            if math.isnan(row["observed"]):
                continue
            lines.append(f"{name:<30}{metric:<18}{row['observed']:>9.3f}s"
                         f"{row['before_err']:>+9.0%}{row['after_err']:>+9.0%}")
    return "\n".join(lines)
