"""Reference (quality, P95) fronts of presets the exact DP may not solve, saved as JSON.

    python benchmarks/reference_fronts.py [--presets scale-8types-256,scale-12types-1k]
        [--exact-limit-s 120] [--seeds 0,1] [--evals 320] [--random-evals 50000]
        [--out benchmarks/data/reference_fronts] [--json FILE] [--target KEY=VALUE]

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
attempt's outcome, the machine). ``--json`` also writes a summary (HV per preset, the
committed front's HV, their ratio and the targets).

Target (`TARGETS`): every preset's new front reaches at least 98% of the HV of the committed
front (benchmarks/data/reference_fronts/<preset>.json, read before it is overwritten), so a
shorter run (``--seeds 0 --random-evals 0``) checks that the searchers still find the
reference, and a change that loses part of the front fails; exits 1 when missed.
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
from _targets import Target, add_target_argument, check, passed, print_checks, resolve
from exact_scaling import run_exact

from tuning import (
    Goal,
    Problem,
    SearchResult,
    default_db_path,
    hypervolume,
    pareto_mask,
    planning_problem,
    search,
)

PRESETS = ("scale-8types-256", "scale-12types-1k")
COMMITTED = Path(__file__).resolve().parent / "data" / "reference_fronts"
TARGETS = {
    "hv_ratio": Target(">=", 0.98, "x", "HV of the new front / HV of the committed front, "
                       "worst preset"),
}


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
    # Defaults = the settings of the committed fronts (their files record them).
    parser.add_argument("--seeds", default="0,1", help="MOBO seeds, comma-separated")
    parser.add_argument("--evals", type=int, default=320, help="evaluations per MOBO run")
    parser.add_argument("--random-evals", type=int, default=50_000,
                        help="evaluations of the random-search run (0: none)")
    parser.add_argument("--out", default="benchmarks/data/reference_fronts")
    parser.add_argument("--json", default=None, help="also write a summary with the targets")
    add_target_argument(parser, TARGETS)
    args = parser.parse_args()
    targets = resolve(TARGETS, args.target)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"args": vars(args), "presets": {}}
    ratios = []
    for preset in args.presets.split(","):
        committed = COMMITTED / f"{preset}.json"
        before = (json.loads(committed.read_text())["hypervolume"] if committed.exists()
                  else None)
        payload = reference_front(preset, exact_limit_s=args.exact_limit_s, seeds=seeds,
                                  evals=args.evals, random_evals=args.random_evals)
        path = out / f"{preset}.json"
        path.write_text(json.dumps(payload, indent=1))
        ratio = None if before is None else payload["hypervolume"] / before
        ratios.append(ratio)
        summary["presets"][preset] = {"method": payload["method"],
                                      "points": len(payload["points"]),
                                      "hypervolume": payload["hypervolume"],
                                      "committed_hypervolume": before, "hv_ratio": ratio,
                                      "seconds": payload.get("seconds")}
        print(f"{preset}: {payload['method']}, {len(payload['points'])} points, HV "
              f"{payload['hypervolume']:.4f}"
              + ("" if ratio is None else f" = {ratio:.2%} of the committed front's")
              + f"; wrote {path}", flush=True)
    known = [r for r in ratios if r is not None]
    rows = check(targets, {"hv_ratio": min(known) if known else None})
    print_checks(rows)
    summary["targets"] = rows
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
