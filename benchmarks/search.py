"""Search speed and quality per preset: auto, MOBO, the ablations at equal evaluations, BO steps.

    python benchmarks/search.py [--presets paper-gsm8k,...] [--seeds 5] [--evals 64,288]
                                [--tune] [--json build/search_bench.json]
                                [--target KEY=VALUE]
    python benchmarks/search.py --quick [--presets ladder-gsm8k,...] [--seeds 2]

``--quick``: the stop rules alone (`quick`): per preset and seed, MOBO under the default
acquisition rule and under the rule before it (front stable for 20 steps), each with the
60 s time limit: seconds to stop, evaluations, HV at stop over the reference (the exact
front where the pair's DP finishes, else the best known: the stored reference front, a
`--long-s` MOBO run with no convergence rule, and every run here, whichever is best).

For each preset (perf DB built when missing):

* **reference**: the exact DP front's hypervolume (HV; lower end of its bracket) where the DP
  finishes within `--exact-limit-s`, else the best known front: the larger of the stored
  reference front (`benchmarks/data/reference_fronts/<preset>.json`, the pooled front of long
  MOBO runs; how it was made is in the file) and the best front any run of this benchmark
  found. Every HV below is a ratio to it.
* **auto**: what `boute plan` runs with no flags (`search(problem, Goal())`): the solver it
  chose, why, its seconds and HV.
* **mobo**: the default MOBO (Sobol start of 256, qLogNEHVI steps of 4, stopped by the
  default rule), one run per seed: seconds and evaluations until 99% of the reference HV.
* **ablation at equal evaluations N** (each of `--evals`), mean and worst over seeds of the HV
  after exactly N plans, and seconds to 99% (worst; "-" when a seed never got there):
  ``bo`` — a Sobol start of ``min(256, N/2)`` then BO steps, structured encoding;
  ``sobol`` — N Sobol points in the structured encoding (no model);
  ``random`` — N uniform points in the structured encoding;
  ``raw`` — the same BO loop in the raw encoding (no structure).
* **BO step**: mean and max seconds of the GP fit, the acquisition (qLogNEHVI over the
  candidate set) and decode + evaluate, over every BO step above, against the step before this
  change (`BEFORE_STEP_S`).
* **min-cost**: for every target of the preset, MOBO's cheapest plan vs the exact minimum
  (worst ratio over seeds; presets where the DP finishes).
* **`boute plan` wall time** (paper-gsm8k): the CLI with no flags, idle and while another
  process keeps one core busy.
* **tune** (with `--tune`): MOBO through Ray Tune on a local Ray (seed 0) until 99%.
* **evaluator**: plans evaluated per second on 100,000 random plans.

Targets (`TARGETS`, 2-core machine): MOBO >= 99% of the reference on every seed within the
preset's `TIME_TARGET_S` (worst time / limit <= 1); BO step <= 1 s (mean); `boute plan` <= 3 s
idle and busy (every run); min-cost within 1%; evaluator >= 10,000 plans/s on every preset.
Prints tables, writes JSON, exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuning import (
    ExactBudgetExceeded,
    Goal,
    MoboSettings,
    Problem,
    RawEncoding,
    SearchResult,
    StopRule,
    evaluate_arrays,
    exact_min_cost,
    planning_problem,
    run_mobo,
    search,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("paper-gsm8k", "paper-mtbench", "scale-3types", "scale-4types", "scale-5types",
           "scale-6types", "scale-8types-256", "scale-12types-1k")
TIME_TARGET_S = {"paper-gsm8k": 5.0, "paper-mtbench": 5.0, "scale-4types": 5.0,
                 "scale-6types": 10.0, "scale-8types-256": 10.0, "scale-12types-1k": 30.0}
BEFORE_STEP_S: dict[str, Any] = {
    "commit": "2449f41 (before issue 16)",
    "steps_s": [11.06, 7.35, 6.73, 5.59, 6.80],
    "how": "paper-gsm8k, --quality 89, the first 5 BO steps after the 256-point Sobol start, "
           "torch's default 2 threads, load average 0.3 (the step benchmarked alone); with "
           "the same code at 1 thread under load 1.8: 9.6 s mean; 2 threads under load 1.8: "
           "24-30 s",
}
ARMS = ("bo", "sobol", "random", "raw")
TARGETS = {
    "mobo_to99_vs_limit": Target("<=", 1.0, "x", "default MOBO, worst seconds to 99% of the "
                                 "reference HV / the preset's TIME_TARGET_S (inf: a seed "
                                 "never got there), worst preset"),
    "min_cost_ratio": Target("<=", 1.01, "x", "MOBO's cheapest plan / the exact minimum, worst"),
    "evaluator_plans_per_s": Target(">=", 10_000.0, "1/s", "plans evaluated per second, "
                                    "slowest preset"),
    "bo_step_mean_s": Target("<=", 1.0, "s", "BO step (fit + acquisition + decode), mean"),
    "plan_wall_s": Target("<=", 3.0, "s", "`boute plan` with no flags, slowest run idle or "
                          "with a core busy"),
}


@dataclass
class Arm:
    """One searcher's runs at one evaluation budget: HV ratios and seconds to 99%."""

    hv: list[float]
    to99_s: list[float | None]
    seconds: list[float]

    def summary(self) -> dict[str, Any]:
        """Mean and worst HV ratio; worst seconds to 99% (None when a seed missed)."""
        hit = [s for s in self.to99_s if s is not None]
        out: dict[str, Any] = {
            "hv_mean": float(np.mean(self.hv)), "hv_worst": float(np.min(self.hv)),
            "to99_worst_s": max(hit) if len(hit) == len(self.to99_s) else None,
            "seeds_at_99": len(hit)}
        return {**out, **asdict(self)}


def _to99(res: SearchResult, ref: float) -> float | None:
    return next((s for _e, s, v in res.trace if v >= 0.99 * ref), None)


def _arm_run(problem: Problem, arm: str, n: int, seed: int) -> SearchResult:
    rule = StopRule.fixed(n)
    if arm == "random":
        return search(problem, Goal(), solver="random", encoding="structured", seed=seed,
                      stop=rule)
    start = n if arm == "sobol" else min(256, n // 2)
    return run_mobo(problem, Goal(), seed=seed, stop=rule,
                    encoding="raw" if arm == "raw" else "structured",
                    settings=MoboSettings(n_init=start))


def _reference(name: str, problem: Problem, limit_s: float) -> dict[str, Any]:
    """Exact HV when the DP finishes within `limit_s`, else the stored reference front."""
    from tuning import exact_search

    t0 = time.perf_counter()
    try:
        exact = exact_search(problem, Goal(), deadline=t0 + limit_s)
        return {"hv": exact.hypervolume(problem), "how": "exact DP",
                "exact_s": time.perf_counter() - t0, "dp_runs": exact.exact_runs}
    except ExactBudgetExceeded:
        stored = REPO / "benchmarks" / "data" / "reference_fronts" / f"{name}.json"
        if not stored.is_file():
            raise SystemExit(f"{name}: the exact DP ran past {limit_s:g} s and there is no "
                             f"{stored}; make one with benchmarks/reference_fronts.py") from None
        ref = json.loads(stored.read_text())
        return {"hv": float(ref["hypervolume"]), "exact_s": None,
                "how": f"stored best-known front ({ref['method']}: {ref['solver']}, seeds "
                       f"{ref['seeds']}, {ref['evals']} evals; exact past {limit_s:g} s)"}


def _mobo_default(problem: Problem, ref: float, seeds: list[int]) -> list[dict[str, Any]]:
    """The default MOBO per seed, stopped at 99% of the reference (or by its own rule)."""
    out = []
    for seed in seeds:
        def reached(_e: int, _s: float, v: float) -> bool:
            return v >= 0.99 * ref

        res = search(problem, Goal(), solver="mobo", seed=seed, callback=reached)
        out.append({"to99_s": _to99(res, ref), "evals": res.evaluations,
                    "hv": res.hypervolume(problem), "stopped": res.stopped})
    return out


def _min_cost(problem: Problem, seeds: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t in problem.scenario.targets:
        found = exact_min_cost(problem, t.single_quality, t.p95_s)
        if found is None:
            rows.append({"quality": t.quality, "p95_s": t.p95_s, "exact": None})
            continue
        exact_cost = float(evaluate_arrays(problem, found).cost_per_hour[0])
        ratios: list[float] = []

        def within(_e: int, _s: float, v: float, c: float = exact_cost) -> bool:
            return v >= -1.01 * c

        for seed in seeds:
            res = search(problem, Goal("min-cost", t.single_quality, t.p95_s), solver="mobo",
                         seed=seed, callback=within)
            b = res.best(problem)
            ratios.append(np.inf if b is None else
                          float(res.metrics.cost_per_hour[b]) / exact_cost)
        rows.append({"quality": t.quality, "p95_s": t.p95_s, "exact": exact_cost,
                     "worst_ratio": max(ratios), "ratios": ratios})
    return rows


def _evaluator_rate(problem: Problem, n: int = 100_000) -> float:
    enc = RawEncoding(problem)
    plans = enc.decode(np.random.default_rng(0).random((n, enc.dim)))
    evaluate_arrays(problem, plans)
    t0 = time.perf_counter()
    evaluate_arrays(problem, plans)
    return n / (time.perf_counter() - t0)


def _plan_wall_s(busy: bool, repeats: int = 3) -> list[float]:
    """Wall seconds of `boute plan --json` (no other flags), optionally with a busy core."""
    spin = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None)
    try:
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([str(Path(sys.executable).with_name("boute")), "plan", "--json",
                            "--out", "build/bench-plan.json", "--plot", "build/bench-pareto.png"],
                           cwd=REPO, check=True, capture_output=True)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()


def _tune_to99(problem: Problem, ref: float) -> dict[str, Any]:
    from placement import ray_temp_dir
    from tuning.tune import search_with_tune

    t0 = time.perf_counter()
    res = search_with_tune(problem, Goal(), seed=0, callback=lambda _e, _s, v: v >= 0.99 * ref,
                           temp_dir=str(ray_temp_dir(REPO / "build" / "ray-tmp")))
    return {"to99_s": _to99(res, ref), "evals": res.evaluations,
            "wall_s": time.perf_counter() - t0}


RULES = {"acquisition (default)": StopRule(),
         "patience 20 (before)": StopRule(patience=20)}


def quick(presets: list[str], seeds: list[int], long_s: float) -> dict[str, Any]:
    """`--quick`: time to stop, evaluations and HV at stop of each stop rule (`RULES`)."""
    from tuning import SearchError

    out: dict[str, Any] = {}
    for name in presets:
        problem = planning_problem(name)
        ref: dict[str, Any]
        try:
            ref = _reference(name, problem, 60.0)
        except (SearchError, SystemExit):     # no exact solver / no stored front
            ref = {"hv": 0.0, "how": "best known (no stored front)", "exact_s": None}
        rows: dict[str, list[dict[str, Any]]] = {}
        best = ref["hv"]
        for label, rule in RULES.items():
            rows[label] = []
            for seed in seeds:
                res = search(problem, Goal(), solver="mobo", seed=seed, stop=rule)
                hv = res.hypervolume(problem)
                best = max(best, hv)
                rows[label].append({"seed": seed, "seconds": res.seconds, "evals": res.evaluations,
                                    "hv": hv, "stopped": res.stopped,
                                    "bo_steps": len(res.step_seconds)})
        if ref["exact_s"] is None:
            long = search(problem, Goal(), solver="mobo", seed=100,
                          stop=StopRule(max_evals=1_000_000, time_limit_s=long_s,
                                        ehvi_fraction=None))
            best = max(best, long.hypervolume(problem))
            ref = {**ref, "hv": best, "how": ref["how"] + f" / best of the runs here and a "
                   f"{long_s:g} s MOBO run ({long.evaluations} plans)"}
        for rs in rows.values():
            for r in rs:
                r["hv_ratio"] = r["hv"] / ref["hv"]
        out[name] = {"reference": ref, "rules": rows}
        print(f"\n== {name}: reference HV {ref['hv']:.5f} ({ref['how']})")
        print(f"{'rule':<24}{'seed':>5}{'s to stop':>11}{'evals':>7}{'steps':>7}{'HV %':>9}  "
              "stopped")
        for label, rs in rows.items():
            for r in rs:
                print(f"{label:<24}{r['seed']:>5}{r['seconds']:>11.2f}{r['evals']:>7}"
                      f"{r['bo_steps']:>7}{100 * r['hv_ratio']:>9.3f}  {r['stopped']}")
        sys.stdout.flush()
    return out


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evals", default="64,288", help="equal-evaluation budgets")
    parser.add_argument("--exact-limit-s", type=float, default=60.0)
    parser.add_argument("--tune", action="store_true", help="also run MOBO through Ray Tune")
    parser.add_argument("--no-plan-wall", action="store_true",
                        help="skip timing the `boute plan` CLI")
    parser.add_argument("--json", default="build/search_bench.json")
    parser.add_argument("--quick", action="store_true", help="the stop rules alone (see the "
                        "module docstring); --presets default: paper-gsm8k,ladder-gsm8k,"
                        "mixed-gsm8k-mtbench")
    parser.add_argument("--long-s", type=float, default=60.0, help="--quick: seconds of the "
                        "reference MOBO run where no exact front or stored front exists")
    add_target_argument(parser, TARGETS)
    args = parser.parse_args()
    if args.quick:
        presets = (args.presets if args.presets != ",".join(PRESETS)
                   else "paper-gsm8k,ladder-gsm8k,mixed-gsm8k-mtbench").split(",")
        payload: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
            "args": vars(args), "quick": quick(presets, list(range(args.seeds)), args.long_s)}
        payload["machine"]["loadavg_at_end"] = os.getloadavg()
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1, default=float))
        print(f"wrote {out}")
        return 0
    targets = resolve(TARGETS, args.target)
    measured: dict[str, float | None] = {"mobo_to99_vs_limit": 0.0, "min_cost_ratio": 1.0,
                                         "evaluator_plans_per_s": float("inf")}
    seeds = list(range(args.seeds))
    budgets = [int(x) for x in args.evals.split(",")]
    results: dict[str, Any] = {}
    failures: list[str] = []
    steps: list[dict[str, float]] = []
    for name in args.presets.split(","):
        problem = planning_problem(name)
        ref = _reference(name, problem, args.exact_limit_s)
        t0 = time.perf_counter()
        auto = search(problem, Goal())
        auto_s = time.perf_counter() - t0
        mobo = _mobo_default(problem, ref["hv"], seeds)
        ablation: dict[int, dict[str, list[SearchResult]]] = {}
        for n in budgets:
            ablation[n] = {arm: [_arm_run(problem, arm, n, s) for s in seeds] for arm in ARMS}
        runs = [r for per in ablation.values() for rs in per.values() for r in rs]
        if ref["exact_s"] is None:          # best known: the stored front or better
            ref["hv"] = max(ref["hv"], *(r.hypervolume(problem) for r in runs))
        hv_ref = ref["hv"]
        table = {n: {arm: Arm([r.hypervolume(problem) / hv_ref for r in rs],
                              [_to99(r, hv_ref) for r in rs], [r.seconds for r in rs]).summary()
                     for arm, rs in per.items()} for n, per in ablation.items()}
        for n in budgets:
            for arm in ("bo", "raw"):
                steps.extend(t for r in ablation[n][arm] for t in r.step_seconds)
        costs = _min_cost(problem, seeds) if ref["exact_s"] is not None else []
        tune = _tune_to99(problem, hv_ref) if args.tune else None
        rate = _evaluator_rate(problem)
        to99 = [m["to99_s"] for m in mobo]
        worst = None if any(t is None for t in to99) else max(t for t in to99 if t is not None)
        results[name] = {
            "gpu_types": len(problem.gpu_types), "gpus": int(problem.stock.sum()),
            "reference": ref,
            "auto": {"solver": auto.solver, "reason": auto.reason, "seconds": auto_s,
                     "hv_ratio": auto.hypervolume(problem) / hv_ref, "stopped": auto.stopped},
            "mobo": mobo, "mobo_to99_worst_s": worst,
            "ablation": {str(n): t for n, t in table.items()}, "min_cost": costs,
            "tune": tune, "evaluator_plans_per_s": rate,
        }
        _print_preset(name, results[name], budgets)
        limit = TIME_TARGET_S.get(name)
        ratio = (float("inf") if worst is None
                 else worst / limit if limit is not None else 0.0)
        measured["mobo_to99_vs_limit"] = max(measured["mobo_to99_vs_limit"] or 0.0, ratio)
        if worst is None:
            failures.append(f"{name}: MOBO missed 99% of the reference on "
                            f"{sum(t is None for t in to99)} seed(s)")
        elif limit is not None and ratio > targets["mobo_to99_vs_limit"].value:
            failures.append(f"{name}: MOBO's worst time to 99% {worst:.1f} s > {limit:g} s")
        worst_cost = max((c.get("worst_ratio", 1.0) for c in costs), default=1.0)
        measured["min_cost_ratio"] = max(measured["min_cost_ratio"] or 1.0, worst_cost)
        measured["evaluator_plans_per_s"] = min(measured["evaluator_plans_per_s"] or 0.0, rate)
        if not targets["min_cost_ratio"].met(worst_cost):
            failures.append(f"{name}: MOBO min-cost {worst_cost:.3f}x the exact minimum")
        if not targets["evaluator_plans_per_s"].met(rate):
            failures.append(f"{name}: evaluator {rate:,.0f} plans/s < "
                            f"{targets['evaluator_plans_per_s'].value:,.0f}")
    step = {k: {"mean": float(np.mean([t[k] for t in steps])),
                "max": float(np.max([t[k] for t in steps]))}
            for k in ("fit_s", "acq_s", "decode_s")} if steps else {}
    total = [sum(t.values()) for t in steps]
    print(f"\nBO step over {len(steps)} steps (all presets, bo + raw arms), seconds:")
    print(f"{'':<10}{'fit':>8}{'acq':>8}{'decode':>8}{'step':>8}")
    if steps:
        print(f"{'mean':<10}" + "".join(f"{step[k]['mean']:>8.3f}" for k in step)
              + f"{np.mean(total):>8.3f}")
        print(f"{'max':<10}" + "".join(f"{step[k]['max']:>8.3f}" for k in step)
              + f"{np.max(total):>8.3f}")
        print(f"{'before':<10}{'':>24}{np.mean(BEFORE_STEP_S['steps_s']):>8.3f}   "
              f"({BEFORE_STEP_S['commit']}; {BEFORE_STEP_S['how'][:60]}...)")
        measured["bo_step_mean_s"] = float(np.mean(total))
        if np.mean(total) > targets["bo_step_mean_s"].value:
            failures.append(f"BO step mean {np.mean(total):.2f} s > "
                            f"{targets['bo_step_mean_s'].value:g} s")
    plan_wall: dict[str, list[float]] = {}
    if not args.no_plan_wall:
        plan_wall = {"idle": _plan_wall_s(False), "one_core_busy": _plan_wall_s(True)}
        print("\n`boute plan` (no flags, paper-gsm8k) wall seconds: "
              + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}"
                          for k, v in plan_wall.items()))
        measured["plan_wall_s"] = max(max(v) for v in plan_wall.values())
        for k, v in plan_wall.items():
            if max(v) > targets["plan_wall_s"].value:
                failures.append(f"`boute plan` {k}: {max(v):.2f} s > "
                                f"{targets['plan_wall_s'].value:g} s")
    # A figure this run did not measure (no BO step, --no-plan-wall) has no target.
    rows = check({k: t for k, t in targets.items() if k in measured}, measured)
    payload = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "loadavg_at_end": os.getloadavg()},
               "args": vars(args), "presets": results, "bo_step": step,
               "bo_step_before": BEFORE_STEP_S, "plan_wall_s": plan_wall,
               "failures": failures, "targets": rows}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=float))
    for f in failures:
        print("MISSED:", f)
    print_checks(rows)
    print(f"wrote {out}")
    return 0 if passed(rows) else 1


def _print_preset(name: str, r: dict[str, Any], budgets: list[int]) -> None:
    ref, auto = r["reference"], r["auto"]
    print(f"\n== {name}: {r['gpu_types']} GPU types, {r['gpus']} GPUs; reference HV "
          f"{ref['hv']:.5f} ({ref['how']}"
          + (f", {ref['exact_s']:.2f} s" if ref["exact_s"] is not None else "") + ")")
    print(f"auto: {auto['solver']} in {auto['seconds']:.2f} s, HV {auto['hv_ratio']:.2%} "
          f"({auto['reason']})")
    to99 = ", ".join(_fmt_s(m["to99_s"]) for m in r["mobo"])
    print(f"default mobo, s to 99% per seed: {to99}; evaluator "
          f"{r['evaluator_plans_per_s']:,.0f} plans/s")
    if r["tune"]:
        print(f"tune: s to 99% {_fmt_s(r['tune']['to99_s'])}, wall {r['tune']['wall_s']:.1f} s")
    for c in r["min_cost"]:
        if c.get("exact") is not None:
            print(f"min-cost ({c['quality']:g}, {c['p95_s']:g} s): exact ${c['exact']:.2f}/h, "
                  f"MOBO worst {c['worst_ratio']:.4f}x")
    print(f"{'evals':>6}{'arm':>8}{'HV mean':>10}{'HV worst':>10}{'s to 99% (worst)':>18}"
          f"{'seeds at 99%':>14}")
    for n in budgets:
        for arm in ARMS:
            a = r["ablation"][str(n)][arm]
            print(f"{n:>6}{arm:>8}{a['hv_mean']:>10.2%}{a['hv_worst']:>10.2%}"
                  f"{_fmt_s(a['to99_worst_s']):>18}{a['seeds_at_99']:>10}/{len(a['hv'])}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
