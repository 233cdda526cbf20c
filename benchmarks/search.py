"""Search quality and speed of every searcher against the exact front, per preset.

    python benchmarks/search.py [--presets paper-gsm8k,...] [--seeds 5] [--tune]
                                [--json build/search_bench.json]

For each preset (perf DB built when missing):

* **exact**: the knapsack DP front (`tuning._exact`), its time and hypervolume (HV; the lower
  bound of its bracket, all on the same normalized reference point);
* **mobo**: the in-process BoTorch searcher, one run per seed, stopped as soon as its front's
  HV reaches 99% of the exact HV (or at `--max-evals`): evaluations and seconds to 99%, and
  the HV ratio reached;
* **min-cost**: for every target of the preset, MOBO's cheapest plan versus the exact minimum
  (ratio, worst over seeds), stopped when within 1%;
* **random**: uniform random integer plans until 99% (or `--random-evals`);
* **raw**: the ablation, MOBO without the structural encoding (z = share + a config and a
  replica fraction per (model, GPU type)), same stopping rule;
* **tune** (with `--tune`): MOBO through Ray Tune on a local Ray (seed 0), same stopping rule;
* **evaluator**: plans evaluated per second on a batch of 100,000 random plans.

Targets (2-core machine): HV >= 99% of exact on every seed; min-cost within 1%; time to 99%
<= 5 s for 4 types/32 GPUs and <= 10 s for 6 types/48 GPUs; evaluator >= 10,000 plans/s.
Prints a table, writes JSON, exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boute.plan_cli import planning_problem
from tuning import Goal, Problem, evaluate_arrays, search
from tuning._encoding import RawEncoding
from tuning._exact import exact_min_cost

PRESETS = ("paper-gsm8k", "paper-mtbench", "scale-3types", "scale-4types", "scale-5types",
           "scale-6types")
TIME_TARGET_S = {"scale-4types": 5.0, "paper-gsm8k": 5.0, "paper-mtbench": 5.0,
                 "scale-6types": 10.0}


@dataclass
class Reach:
    """Effort until a run first reached its goal (None: it did not)."""

    evals: int | None
    seconds: float | None
    ratio: float
    total_evals: int
    total_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dict(self.__dict__)


def _until(target: float) -> tuple[Any, list[tuple[int, float, float]]]:
    """A search callback stopping at `target` and the trace it records."""
    seen: list[tuple[int, float, float]] = []

    def callback(evals: int, seconds: float, value: float) -> bool:
        seen.append((evals, seconds, value))
        return value >= target
    return callback, seen


def _reach(seen: list[tuple[int, float, float]], target: float, scale: float) -> Reach:
    hit = next(((e, s) for e, s, v in seen if v >= target), None)
    last = seen[-1] if seen else (0, 0.0, 0.0)
    return Reach(hit[0] if hit else None, hit[1] if hit else None, last[2] / scale,
                 last[0], last[1])


def pareto_runs(problem: Problem, hv_exact: float, solver: str, seeds: list[int],
                max_evals: int, encoding: str = "structured") -> list[Reach]:
    """Runs of one searcher until 99% of the exact HV."""
    out = []
    for seed in seeds:
        cb, seen = _until(0.99 * hv_exact)
        search(problem, Goal(), solver=solver, seed=seed, max_evals=max_evals,
               encoding=encoding, callback=cb)
        out.append(_reach(seen, 0.99 * hv_exact, hv_exact))
    return out


def tune_run(problem: Problem, hv_exact: float, max_evals: int) -> Reach:
    """MOBO through Ray Tune (seed 0, a local Ray), stopped at 99% like the in-process runs."""
    from placement import ray_temp_dir
    from tuning.tune import search_with_tune

    cb, seen = _until(0.99 * hv_exact)
    search_with_tune(problem, Goal(), seed=0, max_evals=max_evals, callback=cb,
                     temp_dir=str(ray_temp_dir("build/ray-tmp")))
    return _reach(seen, 0.99 * hv_exact, hv_exact)


def min_cost_ratios(problem: Problem, seeds: list[int], max_evals: int) -> list[dict[str, Any]]:
    """Per target: exact minimum and MOBO's worst ratio over seeds."""
    rows = []
    for t in problem.scenario.targets:
        found = exact_min_cost(problem, t.quality, t.p95_s)
        if found is None:
            rows.append({"quality": t.quality, "p95_s": t.p95_s, "exact": None})
            continue
        exact_cost = float(evaluate_arrays(problem, found).cost_per_hour[0])
        ratios, evals = [], []
        for seed in seeds:
            cb, _seen = _until(-1.01 * exact_cost)
            res = search(problem, Goal("min-cost", t.quality, t.p95_s), seed=seed,
                         max_evals=max_evals, callback=cb)
            b = res.best(problem)
            cost = np.inf if b is None else float(res.metrics.cost_per_hour[b])
            ratios.append(cost / exact_cost)
            evals.append(len(res.plans))
        rows.append({"quality": t.quality, "p95_s": t.p95_s, "exact": exact_cost,
                     "worst_ratio": max(ratios), "ratios": ratios, "evals": evals})
    return rows


def evaluator_rate(problem: Problem, n: int = 100_000) -> float:
    """Plans per second of the vectorized evaluator on random raw plans."""
    plans = RawEncoding(problem).decode(np.random.default_rng(0).random(
        (n, RawEncoding(problem).dim)))
    evaluate_arrays(problem, plans)            # warm-up (caches)
    t0 = time.perf_counter()
    evaluate_arrays(problem, plans)
    return n / (time.perf_counter() - t0)


def _fmt(r: Reach) -> str:
    if r.evals is None:
        return f"no ({r.ratio:.1%} @ {r.total_evals})"
    return f"{r.seconds:.2f}s/{r.evals}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-evals", type=int, default=320)
    parser.add_argument("--random-evals", type=int, default=20_000)
    parser.add_argument("--raw-evals", type=int, default=320)
    parser.add_argument("--tune", action="store_true", help="also run MOBO through Ray Tune")
    parser.add_argument("--json", default="build/search_bench.json")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {}
    failures: list[str] = []
    head = (f"{'preset':<14}{'exact s':>8}{'exact HV':>9}{'mobo HV min':>12}"
            f"{'mobo s to 99% (max)':>20}{'evals':>7}{'min-cost worst':>15}"
            f"{'random':>22}{'raw (ablation)':>22}{'tune':>20}{'eval plans/s':>13}")
    print(head, flush=True)
    for name in args.presets.split(","):
        problem = planning_problem(name)
        search(problem, Goal(), solver="exact")        # warm-up: imports, caches
        t0 = time.perf_counter()
        exact = search(problem, Goal(), solver="exact")
        exact_s = time.perf_counter() - t0
        hv = exact.hypervolume(problem)
        mobo = pareto_runs(problem, hv, "mobo", seeds, args.max_evals)
        costs = min_cost_ratios(problem, seeds, args.max_evals)
        rand = pareto_runs(problem, hv, "random", [0], args.random_evals)[0]
        raw = pareto_runs(problem, hv, "mobo", [0], args.raw_evals, encoding="raw")[0]
        tune = tune_run(problem, hv, args.max_evals) if args.tune else None
        rate = evaluator_rate(problem)
        reached = [r for r in mobo if r.seconds is not None]
        worst_s = max((r.seconds or 0.0) for r in reached) if reached else None
        worst_cost = max((c.get("worst_ratio", 1.0) for c in costs), default=1.0)
        results[name] = {
            "gpu_types": len(problem.gpu_types), "gpus": int(problem.stock.sum()),
            "exact": {"seconds": exact_s, "hypervolume": hv, "dp_runs": exact.exact_runs},
            "mobo": [r.as_dict() for r in mobo], "min_cost": costs,
            "random": rand.as_dict(), "raw": raw.as_dict(),
            "tune": tune.as_dict() if tune else None, "evaluator_plans_per_s": rate,
        }
        print(f"{name:<14}{exact_s:>8.2f}{hv:>9.4f}{min(r.ratio for r in mobo):>12.2%}"
              f"{'-' if worst_s is None else f'{worst_s:.2f}':>20}"
              f"{max(r.total_evals for r in mobo):>7}{worst_cost:>15.4f}"
              f"{_fmt(rand):>22}{_fmt(raw):>22}{_fmt(tune) if tune else '-':>20}"
              f"{rate:>13,.0f}", flush=True)
        if len(reached) < len(mobo):
            failures.append(f"{name}: MOBO missed 99% of the exact HV on "
                            f"{len(mobo) - len(reached)} seed(s)")
        if worst_cost > 1.01:
            failures.append(f"{name}: MOBO min-cost {worst_cost:.3f}x the exact minimum")
        limit = TIME_TARGET_S.get(name)
        if limit is not None and (worst_s is None or worst_s > limit):
            failures.append(f"{name}: time to 99% above {limit:g} s")
        if rate < 10_000:
            failures.append(f"{name}: evaluator {rate:,.0f} plans/s < 10,000")
    payload = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "args": vars(args), "presets": results, "failures": failures}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=float))
    print("columns: seconds/evaluations to 99% of the exact HV (or 'no (HV reached @ evals)'); "
          "min-cost = MOBO's worst cost over seeds / exact minimum")
    for f in failures:
        print("MISSED:", f)
    print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
