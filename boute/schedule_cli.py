"""`boute schedule`: one plan per window of the day for a workload whose rate moves.

    boute schedule --scenario S --quality Q --p95 SEC [--window-s 900] [--max-changes 8]

The workload's rate over the day comes from its ``daily_profile`` (``rate_rps`` is the mean),
or from a trace file's own clock (its per-window counts scaled by ``rate_rps`` over its mean
rate). Each distinct level is planned by the same pipeline as `boute plan` (search, then the
headroom check on fresh traffic); `tuning.plan_schedule` chooses the cheapest sequence under
the change bound and the stock, and the result is compared with a static plan for the peak,
one for the mean, and reactive replanning (`tuning._schedule.compare`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from boute._shared import add_catalog_args, save_figure, stderr_note
from common.errors import BouteError

__all__ = ["add_schedule"]


def add_schedule(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute schedule`."""
    p = sub.add_parser("schedule", help="plan the day: one plan per window for a workload "
                       "whose rate moves (daily profile or a long trace)")
    p.add_argument("--scenario", default=None, help="preset name or YAML file")
    add_catalog_args(p)
    p.add_argument("--quality", type=float, default=None, help="minimum quality")
    p.add_argument("--p95", type=float, required=True, help="P95 target of every window, s")
    p.add_argument("--window-s", type=float, default=900.0, help="window length, s (default "
                   "900: 15 min)")
    p.add_argument("--max-changes", type=int, default=8, help="replicas started + stopped "
                   "per window change at most (default 8)")
    p.add_argument("--level-step", type=float, default=0.1, help="relative spacing of the "
                   "planned rate levels (default 0.1: each window's rate rounded up by <= 10%%)")
    p.add_argument("--resim-seeds", type=int, default=1, help="fresh traces per group in "
                   "each level's headroom check (default 1)")
    p.add_argument("--out", default="build/schedule.json", help="schedule JSON to write")
    p.add_argument("--plot", default="build/schedule.png", help="PNG of rate, capacity and "
                   "$/h over the day ('' = none)")
    p.set_defaults(run=_run_schedule)


def _run_schedule(args: argparse.Namespace) -> int:
    from boute._shared import emit
    from tuning import ScheduleError, compare_policies, plan_schedule

    if not (args.p95 > 0 and math.isfinite(args.p95)):
        raise BouteError(f"--p95={args.p95} must be a positive number of seconds")
    if not (args.window_s > 0 and math.isfinite(args.window_s)):
        raise BouteError(f"--window-s={args.window_s} must be a positive number of seconds")
    if not 0 <= args.resim_seeds <= 3:
        raise BouteError(f"--resim-seeds={args.resim_seeds} must be 0 to 3")
    if not (args.level_step > 0 and math.isfinite(args.level_step)):
        raise BouteError(f"--level-step={args.level_step} must be > 0")
    from profiling import load_catalog, load_scenario
    from tuning import SchedulePlanner

    catalog = load_catalog(args.gpu_catalog, args.model_catalog)
    scenario = load_scenario(args.scenario)
    scenario.check_catalog(catalog, args.scenario)
    try:
        pl = SchedulePlanner(scenario, catalog, quality=args.quality, p95_s=args.p95,
                             resim_seeds=args.resim_seeds, note=stderr_note)
        rates = pl.rates(args.window_s)
    except ScheduleError as exc:
        raise BouteError(str(exc)) from None
    try:
        sched = plan_schedule(rates, pl.plan_at, window_s=args.window_s, stock=pl.stock,
                              max_changes=args.max_changes, cold_start_s=pl.cold_start,
                              price_per_hour=pl.price, step=args.level_step,
                              progress=None if args.json else stderr_note)
    except ScheduleError as exc:
        raise BouteError(str(exc)) from None
    policies = compare_policies(sched, pl.candidate(float(np.mean(rates))), pl.meets, pl.cold_start,
                       pl.price)
    sched.extra["goal"] = {"quality": args.quality, "p95_s": args.p95}
    sched.extra["policies"] = [p.to_dict() for p in policies]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    import json

    Path(args.out).write_text(json.dumps(sched.to_dict(), indent=1, default=str) + "\n")
    plot = _plot(sched, args.plot) if args.plot else None
    payload = {"schedule": {k: v for k, v in sched.to_dict().items() if k != "plans"},
               "policies": [p.to_dict() for p in policies], "out": args.out, "plot": plot}

    def human() -> str:
        distinct = len({frozenset(sched.candidates[j].replicas.items())
                        for j in sched.choice})
        lines = [f"schedule: {len(rates)} windows of {args.window_s:g} s, {distinct} distinct "
                 f"deployments, at most {args.max_changes} replicas changed per step",
                 f"{'policy':<13}{'$/day':>10}{'attainment':>12}{'started/day':>13}"]
        for p in policies:
            lines.append(f"{p.name:<13}{p.cost_per_day:>10.2f}{p.attainment:>12.1%}"
                         f"{p.started_per_day:>13}")
        peak = next(p for p in policies if p.name == "static-peak")
        lines.append(f"schedule vs static peak: {sched.cost_per_day / peak.cost_per_day - 1:+.1%}"
                     f" $/day; written to {args.out}" + (f", plot {plot}" if plot else ""))
        return "\n".join(lines)

    emit(args, payload, human)
    return 0


def _plot(sched: Any, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.arange(len(sched.rates)) * sched.window_s / 3600
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    a1.step(hours, sched.rates, where="post", label="window rate (peak)")
    a1.step(hours, [sched.candidates[j].level_rps for j in sched.choice], where="post",
            label="planned level")
    a1.set_ylabel("req/s")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.step(hours, [sched.candidates[j].cost_per_hour for j in sched.choice], where="post",
            color="green")
    a2.set_ylabel("$/h")
    a2.set_xlabel("hour of the day")
    a2.grid(alpha=0.3)
    return save_figure(fig, path)
