"""Reference (quality, P95) fronts of presets the exact DP may not solve, saved as JSON.

    python benchmarks/reference_fronts.py [--presets scale-8types-256,scale-12types-1k]
        [--exact-limit-s 120] [--seeds 0,1,2] [--evals 512] [--random-evals 20000]
        [--out benchmarks/data/reference_fronts]

Per preset (perf DB built when missing, as `boute plan` does):

1. the exact front (`tuning._exact`) in a child process (`exact_scaling.run_exact`) under a
   wall-clock limit; when it finishes, that is the reference;
2. otherwise the union of long runs: MOBO (`search(problem, Goal(), solver="mobo", seed=s,
   max_evals=N)`) for each seed, plus one long random-search run, their budget-feasible
   front points pooled and the non-dominated ones kept. Such a front is a lower bound of the
   true one: its hypervolume (HV, `tuning._front.hypervolume`, normalized objectives) is at
   most the exact HV.

Writes ``<out>/<preset>.json``: points (p95_s, quality, cost_per_hour, strong_share, source),
the HV, and how it was obtained (solver, seeds, evaluations, seconds of every run, the exact
attempt's outcome, the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from exact_scaling import run_exact

from tuning import (
    Goal,
    Problem,
    SearchResult,
    default_db_path,
    pareto_mask,
    planning_problem,
    search,
)
from tuning._front import hypervolume

PRESETS = ("scale-8types-256", "scale-12types-1k")


def _front_points(problem: Problem, res: SearchResult, source: str) -> list[dict[str, Any]]:
    """The budget-feasible non-dominated plans of one run."""
    m = res.metrics
    return [{"p95_s": float(m.p95_s[i]), "quality": float(m.quality[i]),
             "cost_per_hour": float(m.cost_per_hour[i]),
             "strong_share": float(res.plans.strong_share[i]), "source": source}
            for i in np.flatnonzero(res.front_mask(problem))]


def pooled_front(problem: Problem, seeds: list[int], evals: int, random_evals: int
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Union front of MOBO runs (one per seed) and one random-search run.

    Returns:
        (points, runs): the non-dominated pooled points, P95 ascending; per run its solver,
        seed, evaluations, seconds and own HV.

    """
    points: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    plan = [("mobo", s, evals) for s in seeds] + ([("random", 0, random_evals)]
                                                  if random_evals > 0 else [])
    for solver, seed, n in plan:
        t0 = time.perf_counter()
        res = search(problem, Goal(), solver=solver, seed=seed, max_evals=n)
        seconds = time.perf_counter() - t0
        hv = res.hypervolume(problem)
        runs.append({"solver": solver, "seed": seed, "evaluations": len(res.plans),
                     "seconds": seconds, "hypervolume": hv})
        print(f"  {solver} seed {seed}: {len(res.plans)} evals in {seconds:.1f} s, HV {hv:.4f}",
              flush=True)
        points += _front_points(problem, res, f"{solver}:{seed}")
    p95 = np.array([p["p95_s"] for p in points])
    q = np.array([p["quality"] for p in points])
    keep = np.flatnonzero(pareto_mask(p95, q)) if points else np.zeros(0, dtype=np.int64)
    front = sorted((points[i] for i in keep), key=lambda p: p["p95_s"])
    return front, runs


def reference_front(preset: str, *, exact_limit_s: float, seeds: list[int], evals: int,
                    random_evals: int) -> dict[str, Any]:
    """The reference front of one preset and how it was obtained (module docstring)."""
    problem = planning_problem(preset)        # builds the DB when missing, like `boute plan`
    payload: dict[str, Any] = {
        "preset": preset, "gpu_types": list(problem.gpu_types), "gpus": int(problem.stock.sum()),
        "rate_rps": problem.rate_rps, "budget_per_hour": problem.budget,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    exact = None
    if exact_limit_s > 0:
        print(f"{preset}: exact DP, limit {exact_limit_s:g} s ...", flush=True)
        exact = run_exact(preset, str(default_db_path(problem.scenario)), exact_limit_s)
        payload["exact_attempt"] = {
            "status": exact.status, "limit_s": exact_limit_s, "wall_s": exact.wall_s,
            "levels_done": exact.levels_done, "last_level_s": exact.last_level_s,
            "max_states": exact.max_states, "peak_rss_mib": exact.peak_rss_mib,
            "error": exact.error}
        print(f"  exact: {exact.status} after {exact.wall_s:.0f} s ({exact.levels_done} "
              "levels solved)", flush=True)
    if exact is not None and exact.status == "ok":
        p95 = np.array([p for p, _ in exact.front])
        q = np.array([q for _, q in exact.front])
        payload.update(method="exact", solver="exact", seconds=exact.search_s,
                       dp_runs=exact.dp_runs,
                       points=[{"p95_s": float(a), "quality": float(b), "source": "exact"}
                               for a, b in sorted(zip(p95, q, strict=True))])
    else:
        print(f"{preset}: union of long runs (MOBO seeds {seeds} x {evals} evals, random "
              f"{random_evals})", flush=True)
        front, runs = pooled_front(problem, seeds, evals, random_evals)
        payload.update(method="union of long runs", solver="mobo+random", seeds=seeds,
                       evals=evals, random_evals=random_evals, runs=runs,
                       seconds=sum(r["seconds"] for r in runs), points=front)
    pts = payload["points"]
    payload["hypervolume"] = hypervolume(problem, np.array([p["p95_s"] for p in pts]),
                                         np.array([p["quality"] for p in pts]))
    payload["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--exact-limit-s", type=float, default=120.0,
                        help="wall-clock limit of the exact attempt (0: skip it)")
    parser.add_argument("--seeds", default="0,1,2", help="MOBO seeds, comma-separated")
    parser.add_argument("--evals", type=int, default=512, help="evaluations per MOBO run")
    parser.add_argument("--random-evals", type=int, default=20_000,
                        help="evaluations of the random-search run (0: none)")
    parser.add_argument("--out", default="benchmarks/data/reference_fronts")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for preset in args.presets.split(","):
        payload = reference_front(preset, exact_limit_s=args.exact_limit_s, seeds=seeds,
                                  evals=args.evals, random_evals=args.random_evals)
        path = out / f"{preset}.json"
        path.write_text(json.dumps(payload, indent=1))
        print(f"{preset}: {payload['method']}, {len(payload['points'])} points, HV "
              f"{payload['hypervolume']:.4f}; wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
