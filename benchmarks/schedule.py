"""Plans over time on a diurnal day: schedule vs static peak, static mean, reactive replanning.

Issue 25's measurement of `boute schedule`.

    python benchmarks/schedule.py [--json build/schedule_bench.json] [--no-copy]
        [--window-s 900] [--max-changes 8] [--sim-scale 1.0] [--target KEY=VALUE]

The ``diurnal-gsm8k`` preset (the paper's pool and models, GSM8K-shaped requests, a mean of
50 req/s moving from 15 req/s at 04:00 to 81 req/s at 15:00), goal: GSM8K quality 89 and a
P95 of 10 s in every 15-minute window. `tuning.plan_schedule` plans each rate level with the
pipeline of `boute plan` (search, headroom check on a fresh trace per group) and picks the
cheapest day under at most 8 replicas started + stopped per step and the stock (scale up
before scale down); `tuning._schedule.compare` prices the alternatives.

Two attainments per policy:

* **predicted**: the evaluator's planning P95 of the plan in effect at each window's peak rate
  (for reactive replanning, also of the plan it replaces while new replicas start);
* **simulated** (schedule, static peak, static mean): one day of arrivals drawn from the
  profile (Poisson, rate following the day minute by minute; a seed the planner never saw),
  each window's requests routed by that window's plan and simulated replica by replica
  (`tuning.replay`); a window meets the SLO when the P95 of its requests is at most 10 s.
  ``--sim-scale 0.25`` simulates a quarter of the day's windows (every 4th) for a quick run.

Targets (`TARGETS`): the schedule at least 30% cheaper per day than the static plan sized for
the peak, and at least 99% of windows meeting the SLO, predicted and simulated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import write_results
from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESET = "diurnal-gsm8k"
QUALITY, P95_S = 89.0, 10.0
HELD_OUT_SEED = 2026

TARGETS = {
    "schedule_over_static_peak": Target("<=", 0.70, "", "schedule $/day over the static "
                                        "peak plan's"),
    "schedule_attainment_predicted": Target(">=", 0.99, "", "schedule: windows meeting P95 "
                                            "<= 10 s (evaluator)"),
    "schedule_attainment_simulated": Target(">=", 0.99, "", "schedule: windows meeting P95 "
                                            "<= 10 s (simulated day)"),
}


def _simulate(planner: Any, plans: list[Any], day: Any, window_s: float, every: int
              ) -> tuple[float, list[float]]:
    """Share of simulated windows whose P95 meets the target, and each window's P95."""
    from tuning import replay

    p95s = []
    starts = np.arange(0, 86_400.0, window_s)
    for t in range(0, len(starts), every):
        lo, hi = np.searchsorted(day.arrival_s, [starts[t], starts[t] + window_s])
        if hi - lo < 2:
            p95s.append(0.0)
            continue
        part = type(day)(day.arrival_s[lo:hi] - day.arrival_s[lo], day.input_tokens[lo:hi],
                         day.output_tokens[lo:hi], name=f"window-{t}")
        rate = (hi - lo) / window_s
        rep = replay(planner.problem(max(rate, 1e-3)), plans[t], planner.catalog, [part],
                     target_s=P95_S, window_s=window_s, seed=t)
        p95s.append(rep.system_p95_s)
    met = float(np.mean(np.asarray(p95s) <= P95_S))
    return met, p95s


def main() -> int:
    from profiling import generate_trace, load_catalog, load_scenario
    from tuning import SchedulePlanner, compare_policies, plan_schedule

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="build/schedule_bench.json")
    p.add_argument("--window-s", type=float, default=900.0)
    p.add_argument("--max-changes", type=int, default=8)
    p.add_argument("--sim-scale", type=float, default=1.0, help="share of windows simulated")
    p.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                   "benchmarks/data/schedule.json")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    t0 = time.perf_counter()
    catalog = load_catalog()
    scenario = load_scenario(PRESET)
    planner = SchedulePlanner(scenario, catalog, quality=QUALITY, p95_s=P95_S, resim_seeds=1,
                              note=lambda s: print(f"  {s}", flush=True))
    rates = planner.rates(args.window_s)
    sched = plan_schedule(rates, planner.plan_at, window_s=args.window_s,
                          stock=planner.stock, max_changes=args.max_changes,
                          cold_start_s=planner.cold_start, price_per_hour=planner.price,
                          progress=lambda s: print(f"  {s}", flush=True))
    plan_s = time.perf_counter() - t0
    mean_cand = planner.candidate(float(np.mean(rates)))
    policies = {r.name: r for r in compare_policies(sched, mean_cand, planner.meets,
                                           planner.cold_start, planner.price)}
    wl = scenario.named_workloads[0]
    assert wl.daily_profile is not None and wl.shape is not None
    day = generate_trace(wl.shape, rate_rps=wl.rate_rps, num_requests=round(wl.rate_rps *
                         86_400), daily_profile=wl.daily_profile, seed=HELD_OUT_SEED)
    every = max(1, round(1 / args.sim_scale))
    sequences = {"schedule": [sched.candidates[j].plan for j in sched.choice],
                 "static-peak": [sched.candidates[-1].plan] * len(rates)}
    if mean_cand is not None:
        sequences["static-mean"] = [mean_cand.plan] * len(rates)
    simulated: dict[str, Any] = {}
    for name, plans in sequences.items():
        s0 = time.perf_counter()
        met, p95s = _simulate(planner, plans, day, args.window_s, every)
        simulated[name] = {"attainment": met, "window_p95_s": p95s,
                           "seconds": time.perf_counter() - s0}
        print(f"  simulated {name}: {met:.1%} of windows within {P95_S:g} s", flush=True)
    print()
    print(f"{'policy':<13}{'$/day':>9}{'predicted':>11}{'simulated':>11}{'started/day':>13}")
    for name, r in policies.items():
        sim = simulated.get(name, {}).get("attainment")
        print(f"{name:<13}{r.cost_per_day:>9.2f}{r.attainment:>11.1%}"
              f"{('-' if sim is None else f'{sim:.1%}'):>11}{r.started_per_day:>13}")
    peak = policies["static-peak"].cost_per_day
    measured = {
        "schedule_over_static_peak": sched.cost_per_day / peak,
        "schedule_attainment_predicted": policies["schedule"].attainment,
        "schedule_attainment_simulated": simulated["schedule"]["attainment"],
    }
    checks = check(resolve(TARGETS, args.target), measured, {})
    print()
    print_checks(checks)
    payload = {"command": "python benchmarks/schedule.py " + " ".join(sys.argv[1:]),
               "preset": PRESET, "goal": {"quality": QUALITY, "p95_s": P95_S},
               "plan_seconds": plan_s, "seconds": time.perf_counter() - t0,
               "policies": {n: r.to_dict() for n, r in policies.items()},
               "simulated": simulated,
               "schedule": {k: v for k, v in sched.to_dict().items() if k != "plans"},
               "targets": checks}
    write_results(payload, args.json, None if args.no_copy else "schedule.json")
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
