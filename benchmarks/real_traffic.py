"""Plans that hold on real traffic: planned on the workload's own arrivals vs on Poisson.

Issue 25's measurement.

    python benchmarks/real_traffic.py [--json build/real_traffic.json] [--no-copy]
        [--cases azure-conv,azure-code,bursty-gsm8k] [--target KEY=VALUE]

For every case the same workload (the same requests' lengths) is planned twice with `boute
plan`'s pipeline (min-cost at the case's quality and P95, `tuning.choose_plan`: 3 fresh
traces per group, re-planned with derated configs until it holds):

* **Poisson-planned**: ``arrival: poisson``, the perf DB and the headroom check on Poisson
  arrivals (what every plan was before issue 25);
* **burst-aware**: the workload's own arrivals (``arrival: trace`` for a file, ``modulated``
  for the generated case): the DB and the headroom check on block-bootstrap stretches of the
  whole stream, thinned to each rate (`profiling._arrivals`).

and a third time as a window SLO (**slo**: burst-aware, "P95 <= L in at least 95% of the
60 s windows", `boute plan --slo-attainment 95 --slo-window-s 60`).

Then every plan is replayed on the **whole** trace with its real arrivals (`tuning.replay`:
every request routed by the plan's shares, every replica simulated): P95 of every group
against the target, and SLO attainment per 60 s window. The generated case is replayed on a
stream drawn with a held-out seed (the planner never saw it).

Cases (the paper's pool: H100, RTX-PRO-6000, RTX-5090, RTX-4090, 8 of each, $30/h;
Llama-3.1-8B + 70B):

* **azure-conv**: Azure LLM inference trace 2023, conversation (19,366 requests in 1 h,
  Splitwise, ISCA 2024; benchmarks/data/reference/azure-llm-2023/) at 20 req/s, MT-Bench
  quality 8.3, P95 30 s (the issue's reproduction).
* **azure-code**: the same service's code-completion trace (8,819 requests, 2,048 prompt and
  28 output tokens on average, per-minute CV 1.0) at 4 req/s, GSM8K quality 87, P95 8 s.
* **bursty-gsm8k**: paper-gsm8k's lengths at 100 req/s with ``modulated`` arrivals (per-minute
  rate CV 0.5), GSM8K quality 89, P95 10 s, $100/h (with CV 1.0, like the code trace, no plan
  under $60/h holds: minutes at 4-5x the mean rate).

Targets (`TARGETS`): every group of every burst-aware plan within +5% of its target on the
whole trace; every window-SLO plan meets P95 in at least 90% of the whole trace's 60 s windows
(it was planned for 95%; the conversation trace has only 16 such windows at 20 req/s); the
Poisson-planned plan misses on at least one real trace (the premium of the burst-aware plan is
what holding costs, reported per case).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from _results import write_results
from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCE = REPO / "benchmarks" / "data" / "reference" / "azure-llm-2023"
AZURE_COLUMNS = {"arrival_s": "TIMESTAMP", "input_tokens": "ContextTokens",
                 "output_tokens": "GeneratedTokens"}
POOL = {"H100": {"count": 8}, "RTX-PRO-6000": {"count": 8}, "RTX-5090": {"count": 8},
        "RTX-4090": {"count": 8}}
CASES: dict[str, dict[str, Any]] = {
    "azure-conv": {"task": "mtbench", "quality": 8.3, "p95_s": 30.0, "workload": {
        "trace": str(REFERENCE / "AzureLLMInferenceTrace_conv.csv"), "columns": AZURE_COLUMNS,
        "rate_rps": 20.0}},
    "azure-code": {"task": "gsm8k", "quality": 87.0, "p95_s": 8.0, "workload": {
        "trace": str(REFERENCE / "AzureLLMInferenceTrace_code.csv"), "columns": AZURE_COLUMNS,
        "rate_rps": 4.0}},
    "bursty-gsm8k": {"task": "gsm8k", "quality": 89.0, "p95_s": 10.0, "budget": 100.0,
                     "workload": {"shape": "gsm8k", "rate_rps": 100.0,
                                  "arrival": "modulated", "minute_cv": 0.5}},
}
WINDOW_S = 60.0
SLO_ATTAINMENT = 0.95
HELD_OUT_SEED = 1000

TARGETS = {
    "aware_worst_over_target": Target("<=", 1.05, "", "burst-aware plans: worst group P95 on "
                                      "the whole trace over its target"),
    "slo_worst_attainment": Target(">=", 0.90, "", "window-SLO plans (95% of 60 s windows): "
                                   "worst attainment on the whole trace (system)"),
    "poisson_cases_missing": Target(">=", 1, "", "cases whose Poisson-planned plan misses "
                                    "its target on the whole trace (> +5%)"),
}


def _scenario(name: str, case: dict[str, Any], poisson: bool) -> Any:
    from profiling import Scenario

    workload = dict(case["workload"])
    if poisson:
        workload["arrival"] = "poisson"
    return Scenario.model_validate({
        "name": f"rt-{name}-{'poisson' if poisson else 'aware'}", "gpus": POOL,
        "models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}, "task": case["task"],
        "workload": workload, "budget_per_hour": case.get("budget", 30.0)})


def _whole_trace(scenario: Any) -> Any:
    """The workload's whole stream with its real arrivals (a held-out draw if generated)."""
    wl = scenario.named_workloads[0]
    if wl.trace is not None:
        trace = wl.load()
        return trace.scaled_to(wl.rate_rps)
    held_out = scenario.model_copy(update={"profile": scenario.profile.model_copy(
        update={"seed": scenario.profile.seed + HELD_OUT_SEED})})
    return held_out.profile_spec().base_trace()


def _plan(scenario: Any, catalog: Any, quality: float, p95_s: float,
          slo: bool = False) -> dict[str, Any]:
    from tuning import Goal, PlanOptions, WindowSLO, choose_plan, scenario_problem

    t0 = time.perf_counter()
    problem = scenario_problem(scenario, catalog, progress=False)
    db_s = time.perf_counter() - t0
    goal = Goal("min-cost", quality, p95_s, slo=WindowSLO(SLO_ATTAINMENT, WINDOW_S)
                if slo else None)
    held = choose_plan(problem, goal, PlanOptions(), catalog=catalog).held
    return {"problem": problem, "held": held, "db_seconds": db_s,
            "plan_seconds": time.perf_counter() - t0 - db_s}


def run_case(name: str, seed: int) -> dict[str, Any]:
    """Plan the case on Poisson and on its own arrivals; replay both on the whole trace."""
    from profiling import load_catalog
    from tuning import replay

    catalog = load_catalog()
    case = CASES[name]
    aware_sc = _scenario(name, case, poisson=False)
    whole = _whole_trace(aware_sc)
    out: dict[str, Any] = {"case": case, "trace": {
        "requests": len(whole), "duration_s": whole.duration_s, "rate_rps": whole.rate_rps,
        **whole.burstiness()}}
    for kind in ("poisson", "aware", "slo"):
        sc = _scenario(name, case, poisson=kind == "poisson")
        made = _plan(sc, catalog, case["quality"], case["p95_s"], slo=kind == "slo")
        plan = made["held"].plan
        row: dict[str, Any] = {"db_seconds": round(made["db_seconds"], 2),
                               "plan_seconds": round(made["plan_seconds"], 2)}
        if plan is None or plan.predicted is None:
            row["cost_per_hour"] = None
        else:
            # Replayed on the aware problem: same models and routing; groups carry their own
            # configs, so the Poisson plan replays as it would serve.
            rep = replay(made["problem"], plan, catalog, [whole], target_s=case["p95_s"],
                         window_s=WINDOW_S, seed=seed)
            row.update(cost_per_hour=round(plan.predicted.cost_per_hour, 4),
                       holds=made["held"].holds,
                       strong_share=plan.routing.strong_share,
                       headroom=made["held"].summary(),
                       groups=[g.to_dict() for g in plan.groups],
                       replay=rep.to_dict(),
                       worst_over_target=max(g.ratio for g in rep.groups))
        out[kind] = row
        print(f"  {name} {kind}: ${row.get('cost_per_hour')}/h, worst group "
              f"{row.get('worst_over_target', float('nan')):.3f}x target on the whole trace",
              flush=True)
    p, a = out["poisson"].get("cost_per_hour"), out["aware"].get("cost_per_hour")
    out["premium"] = None if not (p and a) else round(a / p - 1, 4)
    return out


def _table(results: dict[str, dict[str, Any]]) -> None:
    def f(v: Any, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    print(f"{'case':<14}{'CV 60s':>7}{'plan on':>9}{'$/h':>8}{'worst P95/target':>18}"
          f"{'system P95 s':>13}{'attain 60s':>11}{'premium':>9}")
    for name, r in results.items():
        for kind in ("poisson", "aware", "slo"):
            row = r[kind]
            rep = row.get("replay") or {}
            print(f"{name:<14}{f(r['trace'].get('count_cv_60s')):>7}{kind:>9}"
                  f"{f(row.get('cost_per_hour')):>8}{f(row.get('worst_over_target'), '.3f'):>18}"
                  f"{f(rep.get('system_p95_s')):>13}"
                  f"{f(rep.get('system_attainment'), '.1%'):>11}"
                  f"{(f(r['premium'], '+.0%') if kind == 'aware' else ''):>9}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="build/real_traffic.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                   "benchmarks/data/real_traffic.json")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    t0 = time.perf_counter()
    results = {name: run_case(name, args.seed) for name in args.cases.split(",")}
    print()
    _table(results)
    aware = [r["aware"].get("worst_over_target") for r in results.values()]
    slo = [(r["slo"].get("replay") or {}).get("system_attainment") for r in results.values()]
    measured = {
        "aware_worst_over_target": (None if any(v is None for v in aware)
                                    else max(aware, default=None)),
        "slo_worst_attainment": None if any(v is None for v in slo) else min(slo),
        "poisson_cases_missing": float(sum(
            1 for name, r in results.items() if name.startswith("azure")
            and (r["poisson"].get("worst_over_target") or 0.0) > 1.05)),
    }
    checks = check(resolve(TARGETS, args.target), measured, {})
    print()
    print_checks(checks)
    payload = {"command": f"python benchmarks/real_traffic.py --cases {args.cases}",
               "seconds": time.perf_counter() - t0, "cases": results, "targets": checks}
    write_results(payload, args.json, None if args.no_copy else "real_traffic.json")
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
